"""The knowledge-point probe's σ maps over a probe set of any size: its images go to the device in chunks, never
whole (issue 32), and each chunk's maps come back to the host."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_probe.callbacks import _streaming
from kd_probe.core.sigma import SigmaMaps, estimate_sigma_maps

__all__ = ["streamed_sigma_maps"]


def streamed_sigma_maps(
    network: nn.Module,
    images: Tensor,
    indices: Sequence[int],
    device: torch.device,
    tick: Callable[[int, int], None],
    ticks: int,
    **options: Any,
) -> SigmaMaps:
    """The σ maps of ``images[indices]`` (global indices: each image's noise seed), ``_streaming.STREAM`` images on
    ``device`` at a time, on the host; ``tick(done, total)`` counts ``ticks`` (σ steps or passes) per chunk
    across all chunks; ``options`` go to :func:`~kd_probe.estimate_sigma_maps`."""
    chunks = [list(indices[part]) for part in _streaming.chunk_slices(len(indices))]
    parts = []
    for number, chunk in enumerate(chunks):

        def progress(done: int, _total: int, first: int = number * ticks) -> None:
            tick(first + done, len(chunks) * ticks)

        maps = estimate_sigma_maps(network, images[chunk].to(device), indices=chunk, progress=progress, **options)
        parts.append(maps.to("cpu") if len(chunks) > 1 else maps)
    return parts[0] if len(parts) == 1 else SigmaMaps.cat(parts)
