"""Reading inputs and labels out of the batches users' data loaders produce (pure torch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = ["unpack_batch"]


def unpack_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """Inputs and labels of a batch: the first two items of a tuple/list, or ``image``/``label`` of a dict."""
    if isinstance(batch, Mapping):
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"a dict batch needs 'image' and 'label' keys, got keys {sorted(batch)}.")
        return batch["image"], batch["label"]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"a batch must be a tuple/list (inputs, labels, ...) or a dict with 'image' and 'label', got {type(batch).__name__}."
    )
