"""Probe sets of any size on a device of limited memory (issue 32): the probe images stay where they are held
(the host), and visit the probed network's device ``STREAM`` at a time; what a probe keeps comes back to the
host. An image's result never depends on the chunk it visits the device in (eval-mode networks, per-image
work), so a probe set of thousands gives the values of one that fits at once."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["STREAM", "chunk_slices", "streamed"]

STREAM = 256  # probe images on the device at once


def chunk_slices(count: int, size: int | None = None) -> list[slice]:
    """``count`` rows in consecutive slices of at most ``size`` (default :data:`STREAM`); one empty slice for
    no rows, so that work on an empty set still runs once."""
    size = STREAM if size is None else size
    return [slice(start, min(start + size, count)) for start in range(0, count, size)] or [slice(0, 0)]


def streamed(work: Callable[..., Tensor], device: torch.device, *rows: Tensor) -> Tensor:
    """``work(*chunk)`` for every :data:`STREAM` rows of the tensors ``rows`` (each chunk moved to ``device``),
    the results concatenated on the device of ``rows[0]`` (the host, for a probe set held there).

    Example::

        >>> streamed(lambda x: x.sum(dim=1), torch.device("cpu"), torch.ones(3, 2)).tolist()
        [2.0, 2.0, 2.0]
    """
    home = rows[0].device
    parts = []
    for chunk in chunk_slices(rows[0].shape[0]):
        parts.append(work(*(tensor[chunk].to(device) for tensor in rows)).to(home))
    return parts[0] if len(parts) == 1 else torch.cat(parts)
