"""``KnowledgePointCount``: knowledge-point statistics accumulated across batches and ranks (methods §1.3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from kd_probe.core.knowledge_points import check_threshold, count_knowledge_points, unit_foreground

__all__ = ["KnowledgePointCount"]


class KnowledgePointCount(Metric):
    """Knowledge points of a set of images seen in batches, possibly on several processes.

    The dataset baseline ``H̄`` of methods §1.3 needs every image's background entropy before any point can be
    counted, so the metric keeps the (small) ``grid × grid`` entropy maps and foreground units and counts
    at :meth:`compute` with :func:`~kd_probe.functional.count_knowledge_points`. Under DDP the maps are
    gathered from every rank; with ``indices`` given to :meth:`update` the images are put in index order
    and duplicates (padding of a distributed sampler) are dropped, so the result equals a single-process run.

    Args:
        threshold: ``b`` in nats.
        baseline: ``"dataset"``, ``"image"`` or a float.
        kwargs: passed to ``torchmetrics.Metric``.

    Example::

        >>> metric = KnowledgePointCount()
        >>> entropy = torch.full((2, 2, 2), -3.0); entropy[:, 0, 0] = -3.5
        >>> metric.update(entropy[:1], torch.tensor([[[1, 0], [0, 0]]]))
        >>> metric.update(entropy[1:], torch.tensor([[[0, 0], [0, 1]]]))
        >>> {name: round(float(value), 3) for name, value in metric.compute().items()}
        {'n_fg': 0.5, 'n_bg': 0.5, 'fg_ratio': 0.5, 'fg_ratio_with_points': 0.5, 'baseline_entropy': -3.083}
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    entropy: list[Tensor]
    foreground: list[Tensor]
    effective: list[Tensor]
    indices: list[Tensor]

    def __init__(self, threshold: float = 0.2, baseline: str | float = "dataset", **kwargs: object) -> None:
        super().__init__(**kwargs)
        check_threshold(threshold)
        number = isinstance(baseline, (int, float)) and not isinstance(baseline, bool)
        if not (baseline in ("dataset", "image") or (number and math.isfinite(baseline))):  # type: ignore[arg-type]
            raise ValueError(f"`baseline` must be 'dataset', 'image' or a finite number of nats, got {baseline!r}.")
        self.threshold, self.baseline = float(threshold), baseline
        for name in ("entropy", "foreground", "effective", "indices"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, entropy: Tensor, fg_mask: Tensor, effective: Tensor | None = None, indices: Tensor | None = None
    ) -> None:
        """Add ``[n, grid, grid]`` entropy maps with their masks (image or unit resolution), or ``[n, U]`` token /
        point entropies with per-unit flags; optionally the ``[n]`` effective flags and the inputs' dataset
        indices (give indices in every update or in none)."""
        if not isinstance(entropy, Tensor) or entropy.dim() not in (2, 3) or not entropy.is_floating_point():
            given = f"{tuple(entropy.shape)} {entropy.dtype}" if isinstance(entropy, Tensor) else type(entropy).__name__
            raise ValueError(f"`entropy` must be float maps [n, grid, grid] or [n, units], got {given}.")
        if not isinstance(fg_mask, Tensor) or fg_mask.dim() == 0 or fg_mask.shape[0] != entropy.shape[0]:
            shape = tuple(fg_mask.shape) if isinstance(fg_mask, Tensor) else type(fg_mask).__name__
            raise ValueError(
                f"`fg_mask` of shape {shape} does not match `entropy` of shape "
                f"{tuple(entropy.shape)}: one mask per map is expected."
            )
        count = entropy.shape[0]
        for name, value in (("effective", effective), ("indices", indices)):
            if value is not None and tuple(torch.as_tensor(value).shape) != (count,):
                raise ValueError(
                    f"`{name}` must hold one value per map, shape ({count},), got {tuple(torch.as_tensor(value).shape)}."
                )
        if bool(self.indices) != (indices is not None) and self.entropy:
            given = "indices=None after updates with indices" if indices is None else "indices after updates without"
            raise ValueError(f"`indices` must be given in every update or in none; this update has {given}.")
        self.entropy.append(entropy.detach().float())
        self.foreground.append(unit_foreground(fg_mask, tuple(entropy.shape[1:])).to(torch.uint8))
        flags = torch.ones(count, dtype=torch.bool, device=entropy.device) if effective is None else effective
        self.effective.append(flags.to(device=entropy.device, dtype=torch.uint8))
        if indices is not None:
            self.indices.append(torch.as_tensor(indices, dtype=torch.long, device=entropy.device).reshape(count))

    def compute(self) -> dict[str, Tensor]:
        """Means over the effective images: ``n_fg``, ``n_bg``, ``fg_ratio``, ``fg_ratio_with_points`` and the
        ``baseline_entropy`` ``H̄`` (NaN for all of them before any update)."""
        keys = ("n_fg", "n_bg", "fg_ratio", "fg_ratio_with_points", "baseline_entropy")
        if isinstance(self.entropy, list) and not self.entropy:
            return {key: torch.tensor(math.nan) for key in keys}
        entropy = dim_zero_cat(self.entropy)
        foreground = dim_zero_cat(self.foreground).bool()
        effective = dim_zero_cat(self.effective).bool()
        if not (isinstance(self.indices, list) and not self.indices):  # a tensor once synced across ranks
            indices = dim_zero_cat(self.indices)
            order = torch.argsort(indices, stable=True)
            keep = torch.ones_like(order, dtype=torch.bool)
            keep[1:] = indices[order][1:] != indices[order][:-1]  # drop repeated images (sampler padding)
            order = order[keep]
            entropy, foreground, effective = entropy[order], foreground[order], effective[order]
        points = count_knowledge_points(
            entropy, foreground, threshold=self.threshold, baseline=self.baseline, effective=effective
        )
        used = points.effective
        values = (
            points.n_fg[used].float().mean(),
            points.n_bg[used].float().mean(),
            torch.tensor(points.fg_ratio),
            torch.tensor(points.fg_ratio_with_points),
            points.baseline[used].nanmean(),
        )
        return dict(zip(keys, values, strict=True))
