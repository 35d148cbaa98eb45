"""Probes compute in float32 whatever precision the Trainer trains in: autocast off, said once per fit."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from kd_probe.core.precision import autocast_off

__all__ = ["check_precision", "float32_probe"]

_noted: weakref.WeakKeyDictionary[pl.Trainer, set[str]] = weakref.WeakKeyDictionary()


def check_precision(trainer: pl.Trainer, owner: str) -> None:
    """Refuse a precision that stores the weights in another type than float32 (``"bf16-true"``, ``"16-true"``,
    ``"64-true"``: the probes' float32 images would not fit them); for a mixed precision (``"bf16-mixed"``,
    ``"16-mixed"``: float32 weights, autocast in the training step) say once per Trainer and probe that the
    probe computes in float32."""
    precision = str(getattr(trainer, "precision", "32-true"))
    if precision.endswith("-true") and precision != "32-true":
        expected = "32-true" if precision.startswith("64") else precision.replace("-true", "-mixed")
        raise ValueError(
            f"Trainer(precision={precision!r}) keeps the weights in another type than float32; {owner} computes "
            f"in float32 and needs float32 weights: train with precision={expected!r}."
        )
    if precision == "32-true" or owner in _noted.setdefault(trainer, set()):
        return
    _noted[trainer].add(owner)
    rank_zero_info(
        f"{owner}: the Trainer trains with precision={precision!r}; the probe computes in float32 (autocast off, "
        "float32 weights and images; a knowledge-point probe given precision='bf16' runs its σ forwards in "
        "bfloat16 by its own choice, methods §4.6), so its numbers do not depend on the training precision."
    )


@contextmanager
def float32_probe(trainer: pl.Trainer | None = None, owner: str = "kd_probe") -> Iterator[None]:
    """Run a probe in float32: autocast off on every device where it is on (Lightning's mixed precision, or a
    probe called from inside a user's ``torch.autocast``); with a Trainer, :func:`check_precision` first.

    Example::

        >>> import torch
        >>> with torch.autocast("cpu", dtype=torch.bfloat16), float32_probe():
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    if trainer is not None:
        check_precision(trainer, owner)
    with autocast_off():
        yield
