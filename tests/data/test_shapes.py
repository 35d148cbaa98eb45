import math

import pytest
import torch

from kd_probe.data import SHAPES, TEXTURES, generate_shapes
from kd_probe.data.shapes import _CHUNK, _chunk_generator, _render, _sample_chunk


def test_same_seed_same_images_and_different_seed_different_images() -> None:
    a, b = generate_shapes(40, seed=5), generate_shapes(40, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, generate_shapes(40, seed=6).images)
    assert not torch.equal(a.images, generate_shapes(40, seed=5, stream=1).images)


def test_an_image_does_not_depend_on_how_many_follow_it() -> None:
    many, few = generate_shapes(_CHUNK + 20, seed=2), generate_shapes(7, seed=2)
    assert torch.equal(many.images[:7], few.images) and torch.equal(many.masks[:7], few.masks)


def test_shapes_dtypes_and_every_mask_non_empty() -> None:
    scenes = generate_shapes(300, image_size=32, num_classes=8, seed=0)
    assert scenes.images.shape == (300, 3, 32, 32) and scenes.images.dtype == torch.uint8
    assert scenes.masks.shape == (300, 32, 32) and scenes.masks.dtype == torch.bool
    assert set(scenes.labels.tolist()) == set(range(8))
    assert bool((scenes.masks.flatten(1).sum(1) > 0).all())
    assert 0.05 < scenes.masks.float().mean() < 0.4


def _chunk(num_classes: int = 8, size: int = 32, bias: float = 0.0) -> dict:
    return _sample_chunk(64, size, num_classes, bias, _chunk_generator(0, 0, 0))


def test_every_mask_covers_its_drawn_shape_and_nothing_else() -> None:
    params = _chunk()
    images, masks = _render(params, 32)
    background, background_masks = _render(params, 32, foreground=False)
    assert torch.equal(masks, background_masks)
    inside = masks.unsqueeze(1).expand_as(images)
    colour = params["colour"][:, :, None, None].expand_as(images)
    # inside the mask: exactly the shape's flat colour; outside: exactly the background, untouched
    assert torch.equal(images[inside], colour[inside])
    assert torch.equal(images[~inside], background[~inside])
    # and the shape really is drawn: it differs from the background somewhere on every image
    assert bool(((images != background).flatten(1).any(1)).all())


@pytest.mark.parametrize("kind", ["circle", "square"])
def test_masks_match_the_shape_geometry_pixel_by_pixel(kind: str) -> None:
    params = _chunk()
    params["labels"] = torch.full_like(params["labels"], SHAPES.index(kind))
    _, masks = _render(params, 32)
    for i in range(8):
        cx, cy = params["centre"][i].tolist()
        r, a = float(params["radius"][i]), float(params["angle"][i])
        for row in range(32):
            for column in range(32):
                x, y = (column + 0.5) / 16 - 1, (row + 0.5) / 16 - 1
                u = ((x - cx) * math.cos(a) + (y - cy) * math.sin(a)) / r
                v = (-(x - cx) * math.sin(a) + (y - cy) * math.cos(a)) / r
                margin = (u * u + v * v - 1.0) if kind == "circle" else max(abs(u), abs(v)) - 0.8
                if abs(margin) > 1e-4:  # pixels on the boundary itself may round either way
                    assert bool(masks[i, row, column]) == (margin < 0), (i, row, column)


def test_background_bias_ties_texture_to_class() -> None:
    tied = generate_shapes(200, num_classes=6, background_bias=1.0, seed=1)
    assert bool(tied.params["tied"].all())
    assert torch.equal(tied.params["texture"], tied.labels % len(TEXTURES))
    free = generate_shapes(200, num_classes=6, background_bias=0.0, seed=1)
    assert not bool(free.params["tied"].any())
    half = generate_shapes(2000, num_classes=6, background_bias=0.5, seed=1)
    assert 0.45 < float(half.params["tied"].float().mean()) < 0.55


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"`num_classes` must be an int from 2 to 8 .*got 9"):
        generate_shapes(4, num_classes=9)
    with pytest.raises(ValueError, match=r"`background_bias` must be a probability in \[0, 1\], got 1.5"):
        generate_shapes(4, background_bias=1.5)
    with pytest.raises(ValueError, match=r"`image_size` must be an int of at least 8 pixels, got 4"):
        generate_shapes(4, image_size=4)
