"""How many perturbed inputs fit in one pass: the σ engines' batch from the device's free memory (methods §4.5).

On a GPU the default batch of perturbed inputs is chosen from a **budget** — by default the smaller of
:data:`DEFAULT_BUDGET` and half the device's free memory; ``memory_budget=`` takes a fraction of the free memory
or a number of bytes — and the measured cost of one perturbed input (a trial pass of the feature and its
gradient). An out-of-memory error halves the batch and retries the same computation with the same noise, so the
maps never depend on the batch. On the CPU the default stays 256 perturbed inputs per pass.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "CPU_BATCH",
    "DEFAULT_BUDGET",
    "MOST_BATCH",
    "batch_for_budget",
    "budget_bytes",
    "free_memory",
    "is_out_of_memory",
]

CPU_BATCH = 256  # perturbed inputs per pass on the CPU (and on any device whose memory cannot be read)
MOST_BATCH = 4096  # the largest automatic batch: beyond it a pass is long enough to hide every launch
DEFAULT_BUDGET = 8 * 2**30  # bytes of one pass's perturbed activations and gradients on a GPU by default


def free_memory(device: torch.device | str) -> int | None:
    """The bytes free on ``device`` (the CUDA driver's count), or ``None`` where it cannot be read (the CPU)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def budget_bytes(budget: float | int | None, device: torch.device | str, free: int | None = None) -> int | None:
    """The bytes one pass may use: ``None`` → ``min(DEFAULT_BUDGET, free/2)``; a float in ``(0, 1]`` → that share of
    the free memory; an int ≥ 1 → that many bytes. ``None`` when the device's memory cannot be read (and the budget
    is not in bytes). ``free`` overrides the device's count (tests simulate a device with it).

    Example::

        >>> budget_bytes(0.25, "cpu", free=2**30) == 2**28
        True
    """
    _check_budget(budget)
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 1:
        return budget
    free = free_memory(device) if free is None else free
    if free is None:
        return None
    if budget is None:
        return min(DEFAULT_BUDGET, free // 2)
    return int(float(budget) * free)


def _check_budget(budget: object) -> None:
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(
            f"`memory_budget` must be None, a fraction of the free memory in (0, 1] or a number of bytes ≥ 1, got "
            f"{budget!r}."
        )
    if isinstance(budget, int) and budget >= 1:
        return
    if not (math.isfinite(budget) and 0 < budget <= 1):
        raise ValueError(
            f"`memory_budget` must be None, a fraction of the free memory in (0, 1] or a number of bytes ≥ 1, got "
            f"{budget!r}."
        )


def batch_for_budget(per_input: float, budget: int, *, most: int = MOST_BATCH) -> int:
    """The most perturbed inputs whose cost ``per_input`` (bytes each, measured) fits in ``budget`` bytes, between
    1 and ``most``, rounded down to a multiple of 8 from 8 on (tensor-core friendly shapes).

    Example::

        >>> batch_for_budget(3.0e6, 2**30), batch_for_budget(3.0e9, 2**30), batch_for_budget(1.0, 2**30)
        (352, 1, 4096)
    """
    if not (math.isfinite(per_input) and per_input > 0):
        return most
    fits = int(budget // per_input)
    fits = fits - fits % 8 if fits >= 8 else fits
    return max(1, min(most, fits))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a device running out of memory (CUDA's ``OutOfMemoryError``, or a ``RuntimeError``
    that says so, as other backends raise)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
