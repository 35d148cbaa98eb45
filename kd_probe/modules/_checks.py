"""Checks of DistillationModule's dry forward: its example batch, and a network that refuses it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_probe.modules._optim import check_number

__all__ = ["check_stage_options", "dry_run", "example_batch"]


def example_batch(example_input: object) -> Tensor:
    """Two inputs for the dry forward: from a batch of inputs (float, or integer token ids), or zeros of an
    input shape."""
    if isinstance(example_input, Tensor):
        token_ids = example_input.dtype in (torch.int64, torch.int32)
        if not (example_input.is_floating_point() or token_ids) or example_input.dim() < 2:
            hint = (
                " (convert 0..255 pixels with `.float() / 255`, then normalise)"
                if example_input.dtype == torch.uint8
                else ""
            )
            raise ValueError(
                f"`example_input` must be a float batch of inputs [B, ...] (or token ids), got shape {tuple(example_input.shape)} "
                f"{example_input.dtype}{hint}."
            )
        return example_input[:2]
    if (
        isinstance(example_input, Sequence)
        and not isinstance(example_input, str)
        and example_input
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in example_input)
    ):
        return torch.zeros(2, *example_input)
    raise ValueError(
        f"`example_input` must be a batch of inputs or an input shape without the batch dimension (e.g. (3, 32, 32)), "
        f"got {example_input!r}."
    )


def dry_run(function: Any, network: Any, layers: Any, example_input: Tensor, given: object) -> Any:
    """``function(network, layers, example_input)``; a network that refuses the input is reported in one sentence."""
    try:
        return function(network, layers, example_input)
    except (RuntimeError, TypeError) as error:
        complaint = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        described = f" of shape {tuple(given.shape)}" if isinstance(given, Tensor) else f"={given!r}"
        raise ValueError(
            f"`example_input`{described} cannot go through the {type(network).__name__}: {complaint}"
        ) from error


def check_stage_options(
    stage: str,
    teacher: nn.Module | None,
    pairs: dict[str, str],
    freeze_through: str | None,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
    feature_weight: float,
) -> None:
    """The stage and loss-weight options of ``DistillationModule``, each mistake in one sentence."""
    check_number("temperature", temperature, 0, strict=True)
    for name, value in dict(kd_weight=kd_weight, ce_weight=ce_weight, feature_weight=feature_weight).items():
        check_number(name, value, 0, strict=False)
    if pairs and teacher is None:
        raise ValueError(f"`feature_pairs`={pairs!r} needs a teacher, got teacher=None.")
    if stage == "mimic" and (teacher is None or len(pairs) != 1):
        raise ValueError(
            f"stage='mimic' needs a teacher and exactly one layer pair in `feature_pairs`, got "
            f"teacher={'None' if teacher is None else type(teacher).__name__} and feature_pairs={pairs!r}."
        )
    if stage == "head" and freeze_through is None:
        raise ValueError("stage='head' needs `freeze_through`, the student layer up to which modules are frozen.")
    if stage != "head" and freeze_through is not None:
        raise ValueError(f"`freeze_through`={freeze_through!r} is only used with stage='head', got stage={stage!r}.")
