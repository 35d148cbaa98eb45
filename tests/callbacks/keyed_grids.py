"""Checks of the image grids the probes log to TensorBoard: they decode, and carry their colour keys."""

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_probe.core.render import KNOWLEDGE_POINT_RGB, OUTLINE_RGB, colorize


def _bytes(rgb: Sequence[float] | torch.Tensor) -> tuple[int, ...]:
    """A colour in [0, 1] as TensorBoard's ``add_image`` stores it (× 255, truncated to uint8)."""
    return tuple((torch.as_tensor(rgb, dtype=torch.float32) * 255).clamp(0, 255).to(torch.uint8).tolist())


def _ramps(picture: Any) -> int:
    """How many colour-key ramps one row of ``picture`` (``[H, W, 3]`` uint8) holds at most: runs from the lowest
    colour of :func:`colorize` to its highest whose green never falls and whose pixels nearly all differ."""
    low, high = (_bytes(colorize(torch.tensor([[v]]), 0.0, 1.0)[:, 0, 0]) for v in (0.0, 1.0))
    most = 0
    for row in picture.tolist():
        found, start = 0, None
        for x, pixel in enumerate(map(tuple, row)):
            if pixel == low:
                start = x
            elif pixel == high and start is not None and x - start >= 20:
                run = row[start : x + 1]
                greens = [p[1] for p in run]
                if greens == sorted(greens) and len({tuple(p) for p in run}) > len(run) // 2:
                    found += 1
                start = None
        most = max(most, found)
    return most


def assert_grids_decode_with_their_keys(events: EventAccumulator) -> None:
    """Every logged grid decodes as a PNG of its recorded size with its colour key: a ramp under each map column,
    and under the knowledge points the overlay's exact red and green as 7 × 7 swatches."""
    image = pytest.importorskip("PIL.Image")
    for tag in events.Tags()["images"]:
        for event in events.Images(tag):
            picture = np.asarray(image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
            assert picture.shape == (event.height, event.width, 3), tag
            assert _ramps(picture) == (2 if tag.endswith("cams") else 1), tag
            if tag.endswith("maps"):
                for rgb in (KNOWLEDGE_POINT_RGB, OUTLINE_RGB):
                    same = torch.from_numpy((picture == np.array(_bytes(rgb))).all(axis=2)).float()
                    assert (torch.nn.functional.avg_pool2d(same[None], 7, stride=1) == 1).any(), (tag, rgb)
