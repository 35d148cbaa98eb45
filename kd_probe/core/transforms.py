"""Seeded image transforms in plain torch (no torchvision), for the invariance agreement probe (methods §2).

Each takes a batch ``[N, C, H, W]`` and a ``torch.Generator`` and draws one random transform per image, so
the same generator seed gives the same transformed batch. ``mean``/``std`` (per channel) describe the
normalisation of the inputs: colour jitter works in pixel space and maps back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TRANSFORMS", "color_jitter", "random_resized_crop", "shift"]


def _check(images: object, generator: object) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        described = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        hint = (
            " (convert 0..255 pixels with `images.float() / 255`)"
            if getattr(images, "dtype", None) == torch.uint8
            else ""
        )
        raise ValueError(f"`images` must be a 4-D float tensor [N, C, H, W], got {described}{hint}.")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"`generator` must be a torch.Generator, got {type(generator).__name__}.")


def _check_fraction(name: str, value: object, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise ValueError(f"`{name}` must be a number in [0, {high}], got {value!r}.")


def _channels(name: str, values: Sequence[float] | None, channels: int, positive: bool = False) -> None:
    if values is None:
        return
    numbers = list(values)
    if len(numbers) not in (1, channels) or (positive and not all(v > 0 for v in numbers)):
        what = "positive numbers" if positive else "numbers"
        raise ValueError(f"`{name}` must be 1 or {channels} {what} (one per channel), got {values!r}.")


def _uniform(count: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator).to(device)


def color_jitter(
    images: Tensor,
    generator: torch.Generator,
    *,
    strength: float = 0.4,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Tensor:
    """Random brightness, contrast and saturation factors in ``[1 − strength, 1 + strength]`` per image,
    applied in pixel space (``x·std + mean``) and clamped to [0, 1] there."""
    _check(images, generator)
    _check_fraction("strength", strength, 1.0)
    _channels("mean", mean, images.shape[1])
    _channels("std", std, images.shape[1], positive=True)
    count, device = images.shape[0], images.device
    shape = (1, -1, 1, 1)
    m = torch.as_tensor(mean if mean is not None else [0.0], dtype=images.dtype, device=device).view(shape)
    s = torch.as_tensor(std if std is not None else [1.0], dtype=images.dtype, device=device).view(shape)
    pixels = images * s + m
    factors = [_uniform(count, 1 - strength, 1 + strength, generator, device).view(-1, 1, 1, 1) for _ in range(3)]
    pixels = (pixels * factors[0]).clamp(0, 1)  # brightness
    grey_mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = (grey_mean + factors[1] * (pixels - grey_mean)).clamp(0, 1)  # contrast
    grey = pixels.mean(dim=1, keepdim=True)
    pixels = (grey + factors[2] * (pixels - grey)).clamp(0, 1)  # saturation
    return (pixels - m) / s


def _affine(images: Tensor, scale: Tensor, offset_x: Tensor, offset_y: Tensor) -> Tensor:
    theta = torch.zeros(images.shape[0], 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1] = scale[:, 0], scale[:, 1]
    theta[:, 0, 2], theta[:, 1, 2] = offset_x, offset_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    images: Tensor, generator: torch.Generator, *, scale: tuple[float, float] = (0.6, 1.0)
) -> Tensor:
    """Crop a random square-ish region covering ``scale`` of the image area (aspect ratio in [3/4, 4/3]),
    at a random position, and resize it back to the full size."""
    _check(images, generator)
    low, high = scale
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and 0 < low <= high <= 1):
        raise ValueError(f"`scale` must be (low, high) fractions of the area with 0 < low ≤ high ≤ 1, got {scale!r}.")
    count, device = images.shape[0], images.device
    area = _uniform(count, *scale, generator, device)
    ratio = torch.exp(_uniform(count, -0.2877, 0.2877, generator, device))  # log(3/4), log(4/3)
    width = (area * ratio).sqrt().clamp(max=1.0)
    height = (area / ratio).sqrt().clamp(max=1.0)
    offset_x = (1 - width) * _uniform(count, -1, 1, generator, device)
    offset_y = (1 - height) * _uniform(count, -1, 1, generator, device)
    return _affine(images, torch.stack([width, height], dim=1), offset_x, offset_y)


def shift(images: Tensor, generator: torch.Generator, *, max_shift: float = 0.125) -> Tensor:
    """Translate each image by up to ``max_shift`` of its size in x and y (edges repeated)."""
    _check(images, generator)
    _check_fraction("max_shift", max_shift, 1.0)
    count, device = images.shape[0], images.device
    offsets = [2 * max_shift * _uniform(count, -1, 1, generator, device) for _ in range(2)]
    return _affine(images, torch.ones(count, 2, dtype=images.dtype, device=device), offsets[0], offsets[1])


TRANSFORMS: dict[str, Callable[..., Tensor]] = {"color": color_jitter, "crop": random_resized_crop, "shift": shift}
