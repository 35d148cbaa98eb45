"""Checks of DistillationModule's dry forward: its example batch, and a network that refuses it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["dry_run", "example_batch"]


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
