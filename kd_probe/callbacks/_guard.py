"""What keeps a probe from ever stopping training: guarded side effects, a stop check, and a cost guard."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn

from kd_probe.core.layers import probing

__all__ = ["CostGuard", "ProbeProgress", "SideEffects", "failure_reason", "seconds_per_pass", "stop_check"]


def failure_reason(error: BaseException) -> str:
    """``"FloatingPointError: non-finite logits"``: what a history entry and a warning record of an error."""
    return f"{type(error).__name__}: {error}"


class SideEffects:
    """Run each side effect of a probe (scalars to one logger, an image grid, a file) in its own guard.

    An ``Exception`` is recorded on the history entry (``entry["problems"]``, plain strings, so every file
    loads with ``torch.load(weights_only=True)``) and warned about once per kind (``what``); training goes on.
    ``KeyboardInterrupt``/``SystemExit`` (Ctrl-C, Lightning's ``SIGTERMException``) are never caught.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._warned: set[str] = set()

    def run(
        self, entry: dict[str, Any] | None, what: str, action: Callable[..., object], *args: Any, **kwargs: Any
    ) -> bool:
        """``action(*args, **kwargs)``; ``False`` (recorded, warned once per ``what``) when it raised an
        ``Exception``."""
        try:
            action(*args, **kwargs)
        except Exception as error:  # a side effect never stops training
            reason = f"{what}: {failure_reason(error)}"
            if entry is not None and reason not in entry.setdefault("problems", []):
                entry["problems"].append(reason)
            if what not in self._warned:
                self._warned.add(what)
                rank_zero_warn(f"kd_probe: {self.owner}: {reason}; training goes on (warned once).")
            return False
        return True


def stop_check(trainer: pl.Trainer) -> Callable[[], None]:
    """A ``check`` for long probe loops: raises Lightning's ``SIGTERMException`` once the Trainer received
    SIGTERM, so that a long probe stops within a step and Lightning's own shutdown runs."""

    def check() -> None:
        if getattr(trainer, "received_sigterm", False):
            raise SIGTERMException

    return check


def clock() -> float:
    """``time.perf_counter()`` after the GPU's queued work has finished (CUDA runs asynchronously: without the
    synchronisation a probe's or an epoch's seconds would count only the launches)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def seconds_per_pass(network: nn.Module, images: Tensor, *, backward: bool, repeats: int = 2) -> float:
    """Wall time of one forward (and input-gradient backward) pass of ``images`` through ``network``, best of
    ``repeats``; eval mode for the duration (modes restored), no parameter's ``.grad`` touched."""
    best = math.inf
    with probing(network):
        for _ in range(repeats):
            start = clock()
            if backward:
                inputs = images.detach().clone().requires_grad_(True)
                output = _first_tensor(network(inputs))
                if output is not None and output.requires_grad:
                    torch.autograd.grad(output.float().sum(), inputs)
            else:
                with torch.no_grad():
                    network(images)
            best = min(best, clock() - start)
    return best


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    values = output.values() if isinstance(output, dict) else output if isinstance(output, (list, tuple)) else []
    return next((value for value in values if isinstance(value, Tensor)), None)


class CostGuard:
    """Says at setup what a probe is expected to cost, after the first training epoch which share of an epoch
    that is, and warns once, with the options that reduce it, when a probe costs more than an epoch."""

    def __init__(self, owner: str, knobs: str) -> None:
        self.owner, self.knobs = owner, knobs
        self.expected: float | None = None  # seconds per probe, from the dry run
        self.measured: float | None = None  # seconds of the last probe run
        self.epoch_seconds: float | None = None
        self._epoch_start: float | None = None
        self.warned = False  # once per run: before the first probe, or after the first epoch
        self.gap = 1.0  # mean training epochs between two probes (set by the probe at the start of training)

    def expect(self, seconds: float, detail: str) -> None:
        """The dry run's estimate: logged once (rank zero)."""
        self.expected = seconds
        rank_zero_info(f"{self.owner}: about {duration(seconds)} per probe ({detail}).")

    def warn_once(self, text: str) -> None:
        """A cost warning (``text`` after the owner), unless one was given already in this run."""
        if not self.warned:
            self.warned = True
            rank_zero_warn(f"kd_probe: {self.owner}: {text}")

    def timed(self, action: Callable[[], Any]) -> Any:
        start = clock()
        try:
            return action()
        finally:
            self.measured = clock() - start

    def epoch_started(self) -> None:
        if self.epoch_seconds is None:
            self._epoch_start = clock()

    def epoch_ended(self) -> None:
        """At the end of the first training epoch (before this epoch's probe): the share, and the warning."""
        if self.epoch_seconds is not None or self._epoch_start is None:
            return
        self.epoch_seconds = max(clock() - self._epoch_start, 1e-9)
        cost = self.measured if self.measured is not None else self.expected
        if cost is None:
            return
        share = cost / self.epoch_seconds
        rank_zero_info(
            f"{self.owner}: a probe costs about {duration(cost)}, {share:.0%} of a training epoch "
            f"({duration(self.epoch_seconds)})."
        )
        if share > self.gap:
            between = f"the {self.gap:g} epochs between two probes" if self.gap > 1 else "a training epoch"
            self.warn_once(
                f"a probe costs about {duration(cost)}, more than {between} ({duration(self.epoch_seconds)} an "
                f"epoch); to make it cheaper: {self.knobs}."
            )


def duration(seconds: float) -> str:
    """Seconds as a log line shows them: ``12.3 s``, ``2.5 min``."""
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds / 60:.1f} min"


class ProbeProgress:
    """A tqdm bar for a long probe on rank zero when the Trainer shows progress; a no-op otherwise."""

    def __init__(self, trainer: pl.Trainer, description: str, total: int, unit: str = "step") -> None:
        self.bar: Any = None
        if trainer.is_global_zero and trainer.progress_bar_callback is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, unit=unit)

    def __enter__(self) -> Any:
        def tick(done: int, _total: int) -> None:
            if self.bar is not None:
                self.bar.update(done - self.bar.n)

        return tick

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        """Show the bar full when the probe is done (tqdm skips redraws within ``mininterval``, so the last one
        drawn could be at 75 %), then clear it; a failed or stopped probe's bar is cleared as it stands."""
        if self.bar is not None:
            if error is None:
                self.bar.update(self.bar.total - self.bar.n)
                self.bar.refresh()
            self.bar.close()
