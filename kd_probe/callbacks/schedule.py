"""When a probe measures: the epochs of a run after which it probes (``epochs=[...]``, ``"paper"`` or
``every_n_epochs``), for the probes and for anyone planning a run around them (:func:`probe_epochs`)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PAPER_EPOCHS", "ProbeSchedule", "probe_epochs"]

PAPER_EPOCHS = (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 70, 90, 110, 130, 150)  # [KP]'s probed checkpoints


def probe_epochs(
    epochs: Sequence[int] | str | None = None, every_n_epochs: int | None = None, *, max_epochs: int | None
) -> list[int]:
    """The epochs after which a probe given ``epochs`` / ``every_n_epochs`` measures, in a run of ``max_epochs``
    (0 is before the first optimizer step): what ``KnowledgePointProbe(epochs=..., every_n_epochs=...)`` probes.

    ``"paper"`` scales [KP]'s checkpoints 0, 2, 5, …, 150 (methods §1.7) to ``max_epochs``.

    Example::

        >>> probe_epochs("paper", max_epochs=30)
        [0, 1, 2, 3, 4, 5, 6, 8, 10, 14, 18, 22, 26, 30]
        >>> probe_epochs(every_n_epochs=3, max_epochs=10)
        [0, 3, 6, 9]

    Raises:
        ValueError: both ``epochs`` and ``every_n_epochs``, a bad value of either, or ``"paper"`` without
            ``max_epochs``.
    """
    return ProbeSchedule(epochs, every_n_epochs).resolve(max_epochs)


class ProbeSchedule:
    """The epochs after which to probe: 0 is before the first optimizer step; ``e`` is after ``e`` epochs.

    ``epochs``: a list of epochs, or ``"paper"`` ([KP]'s 0, 2, 5, …, 150 scaled to ``max_epochs``);
    ``every_n_epochs``: every n epochs (and 0). Neither: every epoch. With ``max_steps`` and no ``max_epochs``
    a list or ``every_n_epochs`` works (a last, partial epoch counts as an epoch); ``"paper"`` is refused.
    """

    def __init__(self, epochs: Sequence[int] | str | None, every_n_epochs: int | None) -> None:
        if epochs is not None and every_n_epochs is not None:
            raise ValueError("Give `epochs` or `every_n_epochs`, not both.")
        if isinstance(epochs, str) and epochs != "paper":
            raise ValueError(f"`epochs` must be a list of epochs or 'paper', got {epochs!r}.")
        if epochs is not None and not isinstance(epochs, str):
            epochs = list(epochs)
            if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in epochs):
                raise ValueError(f"`epochs` must hold non-negative integers, got {epochs!r}.")
        if every_n_epochs is not None and not (isinstance(every_n_epochs, int) and every_n_epochs >= 1):
            raise ValueError(f"`every_n_epochs` must be an integer ≥ 1, got {every_n_epochs!r}.")
        self.epochs, self.every_n_epochs = epochs, every_n_epochs

    def resolve(self, max_epochs: int | None) -> list[int]:
        """The sorted epochs to probe for a run of ``max_epochs`` (needed for ``"paper"``)."""
        if self.epochs == "paper":
            if max_epochs is None or max_epochs < 1:
                raise ValueError(
                    f"`epochs='paper'` scales the paper's checkpoints to the run's length in epochs and needs "
                    f"Trainer(max_epochs=...) ≥ 1, got max_epochs={max_epochs!r} (a run bounded by `max_steps` "
                    "alone has no length in epochs: give `epochs=[...]` or `every_n_epochs` instead)."
                )
            return sorted({min(max_epochs, round(e * max_epochs / 150)) for e in PAPER_EPOCHS})
        if isinstance(self.epochs, list):
            return sorted(set(self.epochs))
        step = self.every_n_epochs or 1
        last = max_epochs if max_epochs is not None and max_epochs >= 0 else 10**9
        return [0, *range(step, last + 1, step)] if last < 10**9 else [0]

    def mean_gap(self, max_epochs: int | None) -> float:
        """The mean number of training epochs between two probes (1 for a single probe): what a probe's cost is
        compared with."""
        if self.epochs is None:
            return float(self.every_n_epochs or 1)
        epochs = self.resolve(max_epochs)
        return max(1.0, (epochs[-1] - epochs[0]) / (len(epochs) - 1)) if len(epochs) > 1 else 1.0

    def includes(self, epoch: int, max_epochs: int | None) -> bool:
        if self.epochs is None and (max_epochs is None or max_epochs < 0):
            return epoch % (self.every_n_epochs or 1) == 0
        return epoch in self.resolve(max_epochs)
