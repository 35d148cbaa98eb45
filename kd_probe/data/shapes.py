"""Generated images of coloured shapes on cluttered backgrounds, with exact foreground masks (pure torch).

Each scene is one foreground shape (its class) drawn over a textured background (smooth noise,
stripes, blobs or a checkerboard, plus distractor fragments and pixel noise). The mask is exactly the
set of pixels painted with the shape's colour. With probability ``background_bias`` the background
texture and palette are tied to the class, so that a background shortcut exists as in real data.

Everything is vectorised over images and drawn from generators seeded by ``(seed, stream, chunk)``,
so a split is the same on every machine and for every number of images asked for (image ``i`` does
not depend on how many follow it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SHAPES", "TEXTURES", "ShapeScenes", "generate_shapes"]

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "ellipse", "crescent")
TEXTURES = ("noise", "stripes", "blobs", "checker")
_CHUNK = 256  # images drawn from one generator; fixed so that results never depend on batching
_DISTRACTORS = 3
_BLOBS = 4


@dataclass
class ShapeScenes:
    """A generated split: ``images`` uint8 ``[N, 3, S, S]``, ``labels`` int64 ``[N]``, ``masks`` bool
    ``[N, S, S]``, and ``params``: per-image scene parameters (shape centre, radius, angle, colour,
    texture, whether the background is tied to the class) for inspection and tests."""

    images: Tensor
    labels: Tensor
    masks: Tensor
    params: dict[str, Tensor]


def _chunk_generator(seed: int, stream: int, chunk: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(stream), int(chunk)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """``[...]`` hue/saturation/value in [0, 1] → ``[..., 3]`` RGB."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    return v.unsqueeze(-1) - (v * s).unsqueeze(-1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _sample_chunk(
    count: int, size: int, num_classes: int, background_bias: float, g: torch.Generator
) -> dict[str, Tensor]:
    """Draw every random number a chunk of scenes needs; rendering is then a pure function."""

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    labels = torch.randint(num_classes, (count,), generator=g)
    radius = 0.45 + 0.25 * rand(count)
    centre = (rand(count, 2) * 2 - 1) * (1 - 0.7 * radius).unsqueeze(1)
    tied = rand(count) < background_bias
    texture = torch.where(tied, labels % len(TEXTURES), torch.randint(len(TEXTURES), (count,), generator=g))
    class_hue = (labels.float() / num_classes + 0.04 * (rand(count) - 0.5)) % 1.0
    hue = torch.where(tied, class_hue, rand(count))
    ones = torch.ones(count)
    tied_colours = torch.stack(
        [_hsv_to_rgb(hue, 0.6 * ones, 0.75 * ones), _hsv_to_rgb(hue, 0.5 * ones, 0.35 * ones)], 1
    )
    random_colours = 0.5 + 0.6 * (rand(count, 2, 3) - 0.5)  # muted: objects stand out, as they tend to
    background_colours = torch.where(tied.view(-1, 1, 1), tied_colours, random_colours)
    return {
        "labels": labels,
        "radius": radius,
        "centre": centre,
        "angle": rand(count) * 2 * math.pi,
        "colour": _hsv_to_rgb(rand(count), 0.6 + 0.4 * rand(count), 0.6 + 0.4 * rand(count)),
        "tied": tied,
        "texture": texture,
        "background_colours": background_colours,
        "frequency": 2.0 + 4.0 * rand(count),
        "texture_angle": rand(count) * math.pi,
        "phase": rand(count) * 2 * math.pi,
        "coarse_noise": torch.randn(count, 1, 6, 6, generator=g),
        "blob_centres": rand(count, _BLOBS, 2) * 2 - 1,
        "blob_widths": 0.15 + 0.3 * rand(count, _BLOBS),
        "distractor_ends": rand(count, _DISTRACTORS, 4) * 2 - 1,
        "distractor_widths": 0.03 + 0.05 * rand(count, _DISTRACTORS),
        "distractor_colours": rand(count, _DISTRACTORS, 3),
        "pixel_noise": 0.04 * torch.randn(count, 3, size, size, generator=g),
    }


def _grid(size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [-1, 1]: ``x`` grows to the right, ``y`` downwards; both ``[S, S]``."""
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return x, y


def shape_membership(shape: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Which pixels lie inside each image's shape. ``shape`` ``[B]`` indexes ``SHAPES``; ``u, v``
    ``[B, S, S]`` are pixel coordinates in the shape's own frame (rotated, in units of its radius)."""
    r2 = u * u + v * v
    theta = torch.atan2(v, u)
    s3 = math.sqrt(3.0)
    inside = torch.stack(
        [
            r2 < 1.0,  # circle
            torch.maximum(u.abs(), v.abs()) < 0.8,  # square
            (v > -0.5) & (s3 * u + v < 1.0) & (-s3 * u + v < 1.0),  # triangle
            ((u.abs() < 0.28) & (v.abs() < 0.95)) | ((v.abs() < 0.28) & (u.abs() < 0.95)),  # cross
            (r2 < 1.0) & (r2 > 0.55**2),  # ring
            r2.sqrt() < 0.7 + 0.3 * torch.cos(5 * theta),  # star
            u * u + (v / 0.45) ** 2 < 1.0,  # ellipse
            (r2 < 1.0) & ((u - 0.45) ** 2 + v * v > 0.75**2),  # crescent
        ],
        dim=1,
    )
    return inside.gather(1, shape.view(-1, 1, 1, 1).expand(-1, 1, *u.shape[1:])).squeeze(1)


def _render(p: dict[str, Tensor], size: int, foreground: bool = True) -> tuple[Tensor, Tensor]:
    """Render a chunk: float images in [0, 1] ``[B, 3, S, S]`` and bool masks ``[B, S, S]``."""
    x, y = _grid(size)
    count = p["labels"].shape[0]

    def col(t: Tensor) -> Tensor:  # [B] -> [B, 1, 1]
        return t.view(-1, 1, 1)

    # Background textures: a mixing weight t in [0, 1] between two colours, one formula per texture.
    ca, sa = col(torch.cos(p["texture_angle"])), col(torch.sin(p["texture_angle"]))
    xr, yr = x * ca + y * sa, -x * sa + y * ca
    freq = col(p["frequency"]) * math.pi
    noise = torch.sigmoid(
        2.0 * F.interpolate(p["coarse_noise"], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    )
    stripes = (torch.sin(freq * xr + col(p["phase"])) > 0).float()
    d2 = (x.view(1, 1, size, size) - p["blob_centres"][..., 0, None, None]) ** 2 + (
        y.view(1, 1, size, size) - p["blob_centres"][..., 1, None, None]
    ) ** 2
    blobs = torch.exp(-d2 / (2 * p["blob_widths"][..., None, None] ** 2)).sum(1).clamp(max=1.0)
    checker = (torch.sin(freq * xr) * torch.sin(freq * yr) > 0).float()
    t = torch.stack([noise, stripes, blobs, checker], 1).gather(
        1, p["texture"].view(-1, 1, 1, 1).expand(-1, 1, size, size)
    )
    c1, c2 = p["background_colours"][:, 0, :, None, None], p["background_colours"][:, 1, :, None, None]
    images = c1 * (1 - t) + c2 * t

    # Distractor fragments: short thick segments of random colours.
    for k in range(_DISTRACTORS):
        ends = p["distractor_ends"][:, k]
        ax, ay, bx, by = (col(ends[:, i]) for i in range(4))
        bx, by = ax + 0.35 * (bx - ax), ay + 0.35 * (by - ay)
        dx, dy = bx - ax, by - ay
        h = (((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-8)).clamp(0, 1)
        segment = (x - ax - h * dx) ** 2 + (y - ay - h * dy) ** 2 < col(p["distractor_widths"][:, k]) ** 2
        images = torch.where(segment.unsqueeze(1), p["distractor_colours"][:, k, :, None, None], images)
    images = (images + p["pixel_noise"]).clamp(0, 1)

    # Foreground shape, drawn last in one flat colour: the mask is exactly its pixels.
    cos_a, sin_a, r = col(torch.cos(p["angle"])), col(torch.sin(p["angle"])), col(p["radius"])
    dx, dy = x - col(p["centre"][:, 0]), y - col(p["centre"][:, 1])
    u, v = (dx * cos_a + dy * sin_a) / r, (-dx * sin_a + dy * cos_a) / r
    masks = shape_membership(p["labels"], u, v)
    if foreground:
        images = torch.where(masks.unsqueeze(1), p["colour"][:, :, None, None], images)
    assert images.shape == (count, 3, size, size)
    return images, masks


def generate_shapes(
    count: int,
    *,
    image_size: int = 32,
    num_classes: int = 6,
    background_bias: float = 0.0,
    seed: int = 0,
    stream: int = 0,
) -> ShapeScenes:
    """Generate ``count`` scenes. The same ``(seed, stream)`` always gives the same images.

    Args:
        count: number of images.
        image_size: side of the square images in pixels (≥ 8).
        num_classes: number of shape classes, at most ``len(SHAPES)`` (8); class ``c`` is ``SHAPES[c]``.
        background_bias: probability in [0, 1] that an image's background texture and palette are
            tied to its class.
        seed: random seed.
        stream: independent stream of scenes for the same seed (the data module uses one per split).

    Example::

        >>> scenes = generate_shapes(4, image_size=32, num_classes=3, seed=1)
        >>> scenes.images.shape, scenes.images.dtype, scenes.masks.shape
        (torch.Size([4, 3, 32, 32]), torch.uint8, torch.Size([4, 32, 32]))
    """
    _check_options(count=count, image_size=image_size, num_classes=num_classes, background_bias=background_bias)
    _check_seed("seed", seed)
    _check_seed("stream", stream)
    images, labels, masks, params = [], [], [], []
    for chunk in range(max(1, math.ceil(count / _CHUNK))):
        n = min(_CHUNK, count - chunk * _CHUNK)
        p = _sample_chunk(_CHUNK, image_size, num_classes, background_bias, _chunk_generator(seed, stream, chunk))
        p = {k: v[:n] for k, v in p.items()}
        chunk_images, chunk_masks = _render(p, image_size)
        images.append((chunk_images * 255).round().to(torch.uint8))
        masks.append(chunk_masks)
        labels.append(p["labels"])
        params.append({k: v for k, v in p.items() if k != "pixel_noise"})
    merged = {k: torch.cat([p[k] for p in params]) for k in params[0]}
    return ShapeScenes(torch.cat(images), torch.cat(labels), torch.cat(masks), merged)


def _check_seed(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative int, got {value!r}.")


def _check_options(*, count: int, image_size: int, num_classes: int, background_bias: float) -> None:
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"`count` must be a non-negative int, got {count!r}.")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"`image_size` must be an int of at least 8 pixels, got {image_size!r}.")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= len(SHAPES):
        raise ValueError(
            f"`num_classes` must be an int from 2 to {len(SHAPES)} (one per shape in SHAPES), got {num_classes!r}."
        )
    probability = isinstance(background_bias, (int, float)) and not isinstance(background_bias, bool)
    if not probability or not 0.0 <= float(background_bias) <= 1.0:
        raise ValueError(f"`background_bias` must be a probability in [0, 1], got {background_bias!r}.")
