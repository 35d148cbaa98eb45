"""The colour keys under the TensorBoard image grids (kd_probe/core/_keys.py, drawn by kd_probe/core/render.py)."""

import pytest
import torch

from kd_probe.core._font import label_strip, text_mask
from kd_probe.core._keys import key_row, number, ramp_key, swatch_key
from kd_probe.core.render import (
    KNOWLEDGE_POINT_RGB,
    OUTLINE_RGB,
    colorize,
    knowledge_point_panels,
    map_rows,
    matrix_picture,
    point_projections,
    token_strips,
)


def _has_text(picture: torch.Tensor, text: str) -> bool:
    """Whether ``text`` is written in white, one font pixel per pixel, somewhere in ``picture`` ``[3, H, W]``."""
    white = (picture == 1).all(dim=0)
    mask = text_mask(text)
    if white.shape[0] < mask.shape[0] or white.shape[1] < mask.shape[1]:
        return False
    windows = white.unfold(0, mask.shape[0], 1).unfold(1, mask.shape[1], 1)
    return bool((windows == mask).all(dim=-1).all(dim=-1).any())


def _bar(key: torch.Tensor) -> torch.Tensor:
    """The colours ``[3, L]`` of the first row of ``key`` that holds colours other than black and white (the ramp),
    from its first to its last coloured pixel."""
    coloured = ((key.amax(dim=0) - key.amin(dim=0)) > 1e-6).any(dim=-1)
    row = key[:, int(coloured.nonzero()[0])]
    lit = (row.amax(dim=0) > 0).nonzero().flatten()
    return row[:, int(lit[0]) : int(lit[-1]) + 1]


def _ends(low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`colorize` gives ``low`` and ``high`` on the scale from ``low`` to ``high``."""
    rgb = colorize(torch.tensor([[low, high]]), low, high)[:, 0]
    return rgb[:, 0], rgb[:, 1]


def _has_block(picture: torch.Tensor, rgb: tuple[float, float, float], side: int = 7) -> bool:
    """Whether ``picture`` holds a ``side × side`` square of exactly ``rgb``."""
    same = (picture == torch.tensor(rgb)[:, None, None]).all(dim=0).float()
    return bool((torch.nn.functional.avg_pool2d(same[None, None], side, stride=1) == 1).any())


def _panels_inputs() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 16, generator=generator)
    entropy = -3 + torch.rand(2, 4, 4, generator=generator)
    mask = torch.zeros(2, 16, 16)
    mask[:, 4:12, 4:12] = 1
    return images, entropy, entropy < -2.5, mask


def test_the_knowledge_point_panels_grow_by_a_key_of_the_entropy_scale_and_the_overlay_colours() -> None:
    images, entropy, points, mask = _panels_inputs()
    plain = knowledge_point_panels(images, entropy, points, mask, labels=None, key=False)
    keyed = knowledge_point_panels(images, entropy, points, mask, labels=None)
    assert keyed.shape[0] == 3 and keyed.shape[2] == plain.shape[2] == 3 * 64
    assert torch.equal(keyed[:, : plain.shape[1]], plain), "the key only adds rows under the grid"
    key = keyed[:, plain.shape[1] :]
    assert key.shape[1] > 0 and torch.equal(key[:, :, :64], torch.zeros(3, key.shape[1], 64)), "none under inputs"
    low, high = float(entropy.min()), float(entropy.max())
    bar = _bar(key[:, :, 64:128])
    assert bar.shape[1] == 64 - 6, "the ramp spans its column but for a margin of 3 pixels on each side"
    darkest, brightest = _ends(low, high)
    assert torch.equal(bar[:, 0], darkest) and torch.equal(bar[:, -1], brightest)
    heat = plain[:, :, 64:128].flatten(1)
    for end in (darkest, brightest):  # the key's ends are colours the entropy maps use: their lowest and highest
        assert (heat == end[:, None]).all(dim=0).any()
    entropy_key = key[:, :, 64:128]
    for text in ("ENTROPY", "(NATS),", number(low), number(high), "KEPT", "DISCARDED"):
        assert _has_text(entropy_key, text), text
    overlay_key = key[:, :, 128:]
    assert _has_block(overlay_key, KNOWLEDGE_POINT_RGB) and _has_block(overlay_key, OUTLINE_RGB)
    assert (plain[:, :, 128:] == torch.tensor(OUTLINE_RGB)[:, None, None]).all(dim=0).any(), "the outline's green"
    for text in ("OBJECT", "OUTLINE", "KNOWLEDGE", "POINT"):
        assert _has_text(overlay_key, text), text
    labelled = knowledge_point_panels(images, entropy, points, mask)
    strip = label_strip(("input", "entropy", "knowledge points"), 64)
    assert torch.equal(labelled, torch.cat([strip, keyed], dim=1)), "column names on top, the key at the bottom"
    assert torch.equal(labelled, knowledge_point_panels(images, entropy, points, mask)), "deterministic"


def test_the_map_rows_say_each_map_is_scaled_per_image() -> None:
    generator = torch.Generator().manual_seed(1)
    pictures, maps = torch.rand(2, 3, 16, 16, generator=generator), [torch.rand(2, 16, 16, generator=generator)] * 2
    plain = map_rows(pictures, maps, key=False)
    keyed = map_rows(pictures, maps)
    assert torch.equal(keyed[:, : plain.shape[1]], plain) and keyed.shape[2] == plain.shape[2]
    key = keyed[:, plain.shape[1] :]
    assert not key[:, :, :64].any(), "no key under the pictures"
    darkest, brightest = _ends(0.0, 1.0)
    for column in (1, 2):
        cell = key[:, :, 64 * column : 64 * (column + 1)]
        bar = _bar(cell)
        assert torch.equal(bar[:, 0], darkest) and torch.equal(bar[:, -1], brightest)
        for text in ("SCALED", "PER IMAGE", "LOW", "HIGH"):
            assert _has_text(cell, text), text
    labels = ("input", "teacher CAM", "student CAM")
    assert torch.equal(map_rows(pictures, maps, labels=labels), torch.cat([label_strip(labels, 64), keyed], dim=1))


def test_token_strips_end_with_the_entropy_scale_and_a_swatch_of_each_mark() -> None:
    entropy = torch.tensor([[-2.0, -1.5, -1.0, float("nan")], [-1.8, -1.2, -1.1, -1.9]])
    points, foreground = entropy < -1.7, entropy > -1.6
    plain = token_strips(entropy, points, foreground, key=False)
    keyed = token_strips(entropy, points, foreground)
    assert torch.equal(keyed[:, : plain.shape[1]], plain) and keyed.shape[2] == plain.shape[2]
    key = keyed[:, plain.shape[1] :]
    darkest, brightest = _ends(-2.0, -1.0)
    bar = _bar(key)
    assert torch.equal(bar[:, 0], darkest) and torch.equal(bar[:, -1], brightest)
    for rgb in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0)):  # the POINTS row's red, green and yellow
        assert _has_block(key, rgb), rgb
    for text in ("-2", "-1", "PADDING", "KNOWLEDGE", "FOREGROUND", "BOTH", "KEPT", "DISCARDED"):
        assert _has_text(key, text), text


def test_point_projections_key_their_entropy_and_their_kinds_of_point() -> None:
    generator = torch.Generator().manual_seed(2)
    xyz, entropy = torch.randn(1, 30, 3, generator=generator), torch.linspace(-3, -2, 30)[None]
    points, foreground = entropy < -2.8, xyz[..., 0] > 0
    plain = point_projections(xyz, entropy, points, foreground, size=96, labels=None, key=False)
    keyed = point_projections(xyz, entropy, points, foreground, size=96, labels=None)
    assert torch.equal(keyed[:, : plain.shape[1]], plain) and keyed.shape[2] == 192
    key = keyed[:, plain.shape[1] :]
    bar = _bar(key[:, :, :96])
    darkest, brightest = _ends(-3.0, -2.0)
    assert torch.equal(bar[:, 0], darkest) and torch.equal(bar[:, -1], brightest)
    assert _has_text(key[:, :, :96], "-3") and _has_text(key[:, :, :96], "-2")
    for rgb in (KNOWLEDGE_POINT_RGB, (0.1, 0.8, 0.2), (0.45, 0.45, 0.45)):
        assert _has_block(key[:, :, 96:], rgb), rgb
        assert (plain[:, :, 96:] == torch.tensor(rgb)[:, None, None]).all(dim=0).any(), "the colours drawn"


def test_matrix_pictures_key_their_fixed_scale_and_missing_values() -> None:
    values = torch.tensor([[0.2, -0.4], [1.0, float("nan")]])
    plain = matrix_picture(values, ["a", "b"], ["x", "y"], low=-1.0, high=1.0, key=False)
    keyed = matrix_picture(values, ["a", "b"], ["x", "y"], low=-1.0, high=1.0, key_title="gap")
    assert torch.equal(keyed[:, : plain.shape[1]], plain) and keyed.shape[2] == plain.shape[2]
    key = keyed[:, plain.shape[1] :]
    darkest, brightest = _ends(-1.0, 1.0)
    bar = _bar(key)
    assert torch.equal(bar[:, 0], darkest) and torch.equal(bar[:, -1], brightest)
    for text in ("GAP,", "BLACK:", "-1", "1"):
        assert _has_text(key, text), text
    full = matrix_picture(values.nan_to_num(0.0), ["a", "b"], ["x", "y"], low=-1.0, high=1.0, key_title="gap")
    assert not _has_text(full[:, plain.shape[1] :], "BLACK:"), "no word about missing values when none is missing"


@pytest.mark.parametrize("width", [2, 5, 40, 300])
def test_keys_keep_their_width_and_the_exact_colours_at_any_width(width: int) -> None:
    ramp = ramp_key(lambda v: colorize(v[None], 0.0, 1.0)[:, 0], width, "a title", [("low", "high")])
    swatches = swatch_key(width, [((0.5, 0.25, 1.0), "a colour"), ((0.0, 0.0, 1.0), "another")])
    assert ramp.shape[::2] == (3, width) and swatches.shape[::2] == (3, width)
    darkest, brightest = _ends(0.0, 1.0)
    bar = _bar(ramp)
    assert torch.equal(bar[:, 0], darkest) and torch.equal(bar[:, -1], brightest)
    assert (swatches == torch.tensor([0.5, 0.25, 1.0])[:, None, None]).all(dim=0).any()
    row = key_row([ramp, None, swatches], width)
    assert row.shape == (3, max(ramp.shape[1], swatches.shape[1]), 3 * width)
    assert torch.equal(row[:, : ramp.shape[1], :width], ramp) and not row[:, :, width : 2 * width].any()
