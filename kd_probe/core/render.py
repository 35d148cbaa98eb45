"""Pictures of knowledge points in pure torch (no matplotlib): for TensorBoard image grids and reports."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_probe.core._font import label_strip, row_labels
from kd_probe.core._keys import key_row, number, ramp_key, swatch_key
from kd_probe.core.units import upsample_units

__all__ = [
    "KNOWLEDGE_POINT_RGB",
    "OUTLINE_RGB",
    "as_rgb",
    "colorize",
    "knowledge_point_panels",
    "map_rows",
    "per_image_unit",
    "point_projections",
    "token_strips",
    "with_column_labels",
]

# a perceptually ordered dark-blue → teal → yellow ramp (viridis-like anchors)
_RAMP = torch.tensor(
    [[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551], [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]]
)
KNOWLEDGE_POINT_RGB = (1.0, 0.1, 0.1)  # the knowledge points' red, in every picture and its key
OUTLINE_RGB = (0.1, 1.0, 0.2)  # the object outline's green in the image panels
_OBJECT_POINT_RGB, _BACKGROUND_POINT_RGB = (0.1, 0.8, 0.2), (0.45, 0.45, 0.45)  # point clouds
_ENTROPY_ENDS = ("kept", "discarded")  # what a low and a high entropy mean: the unit's information is ...


def colorize(values: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    """Map ``[..., H, W]`` values to RGB ``[..., 3, H, W]`` in [0, 1] with a viridis-like ramp
    (``low``/``high`` default to the min/max of ``values``)."""
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    scaled = ((values - low) / max(high - low, 1e-12)).clamp(0, 1) * (len(_RAMP) - 1)
    index = scaled.floor().long().clamp(max=len(_RAMP) - 2)
    weight = (scaled - index).unsqueeze(-1)
    ramp = _RAMP.to(values.device)
    rgb = ramp[index] * (1 - weight) + ramp[index + 1] * weight
    return rgb.movedim(-1, -3)


def per_image_unit(values: Tensor) -> Tensor:
    """Min–max scaling of each item (first dimension) to [0, 1]."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    flat = values.flatten(1)
    low, high = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    return (values - low) / (high - low).clamp(min=1e-12)


def as_rgb(pictures: Tensor) -> Tensor:
    """``[N, C, H, W]`` pictures with any number of channels as RGB ``[N, 3, H, W]``: one or two channels are
    shown as grey (the first channel), three as they are, more lose the extra channels (e.g. alpha, infrared).

    Example::

        >>> tuple(as_rgb(torch.rand(2, 1, 8, 8)).shape), tuple(as_rgb(torch.rand(2, 4, 8, 8)).shape)
        ((2, 3, 8, 8), (2, 3, 8, 8))
    """
    if pictures.dim() != 4 or pictures.shape[1] < 1:
        raise ValueError(f"`pictures` must be [N, C, H, W] with C ≥ 1, got shape {tuple(pictures.shape)}.")
    return pictures[:, :1].expand(-1, 3, -1, -1) if pictures.shape[1] < 3 else pictures[:, :3]


def _to_display(images: Tensor) -> Tensor:
    """Per-image min–max scaling to [0, 1] (works whatever normalisation the model expects), 3 channels."""
    return per_image_unit(as_rgb(images))


def _outline(mask: Tensor) -> Tensor:
    """Pixels of ``mask`` ``[N, H, W]`` (bool) that touch a pixel outside it."""
    padded = F.pad(mask[:, None].float(), (1, 1, 1, 1), value=0.0)
    eroded = -F.max_pool2d(-padded, 3, stride=1)[:, 0]
    return mask & (eroded < 0.5)


def with_column_labels(picture: Tensor, labels: Sequence[str] | None) -> Tensor:
    """``picture`` ``[3, H, W]`` under a strip naming its ``len(labels)`` equally wide columns (white text on
    black, see :func:`~kd_probe.core._font.label_strip`); unchanged when ``labels`` is ``None``."""
    if labels is None:
        return picture
    if not labels or picture.shape[-1] % len(labels):
        raise ValueError(
            f"`labels` must name the {picture.shape[-1]}-pixel-wide picture's equally wide columns, "
            f"got {len(labels)} labels: {list(labels)}."
        )
    return torch.cat([label_strip(labels, picture.shape[-1] // len(labels)).to(picture), picture], dim=-2)


def _paint(values: Tensor) -> Tensor:
    """The ramp of :func:`colorize` over ``[L]`` values in [0, 1], as ``[3, L]`` (what a key's bar shows)."""
    return colorize(values[None], 0.0, 1.0)[:, 0]


def _entropy_key(width: int, low: float, high: float, which: str, size: int | None = None) -> Tensor:
    """The key of entropy colours shared by ``which`` (e.g. ``"all rows"``): the ramp from ``low`` to ``high`` nats
    (low = the unit's information is kept, high = discarded)."""
    ends = [(number(low), number(high)), _ENTROPY_ENDS]
    return ramp_key(_paint, width, f"entropy (nats), {which}", ends, size=size)


def _with_key(picture: Tensor, keys: Sequence[Tensor | None], width: int | Sequence[int]) -> Tensor:
    """``picture`` ``[3, H, W]`` over a strip with each of ``keys`` under its column of ``width`` pixels."""
    return torch.cat([picture, key_row(keys, width).to(picture)], dim=-2)


_PANEL_LABELS = ("input", "entropy", "knowledge points")


def knowledge_point_panels(
    images: Tensor,
    entropy: Tensor,
    points: Tensor,
    mask: Tensor,
    *,
    scale: int = 4,
    labels: Sequence[str] | None = _PANEL_LABELS,
    key: bool = True,
) -> Tensor:
    """One RGB picture ``[3, strip + N·H·scale + key, 3·W·scale]``: per image (a row) the input (min–max scaled
    per image), its entropy map (low entropy = dark; one scale for all rows, from their lowest to their highest
    entropy), and the knowledge points (red units) over the grey input with the foreground outline (green), under
    a strip naming the columns (``INPUT | ENTROPY | KNOWLEDGE POINTS``; no strip with ``labels=None``) and over a
    colour key (no key with ``key=False``): under the entropy column the ramp with its ends in nats (low: the
    unit's information is kept, high: discarded), under the knowledge points the overlay's red and green.

    Args:
        images: ``[N, C, H, W]`` inputs as given to the model.
        entropy: ``[N, grid, grid]`` entropy maps.
        points: ``[N, grid, grid]`` bool knowledge points.
        mask: ``[N, H, W]`` foreground masks at image resolution (> 0 = foreground).
        scale: nearest upscaling of every panel, so that small images stay readable.
    """
    size = (images.shape[-2], images.shape[-1])
    shown = _to_display(images.detach().float().cpu())
    values = entropy.detach().float().cpu()
    low, high = float(values.min()), float(values.max())
    heat = colorize(upsample_units(values, size)[:, 0], low, high)
    grey = shown.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1) * 0.7
    marked = upsample_units(points.detach().float().cpu(), size)[:, 0] > 0.5
    red = torch.tensor(KNOWLEDGE_POINT_RGB)[None, :, None, None]
    overlay = torch.where(marked[:, None], 0.45 * grey + 0.55 * red, grey)
    edge = _outline(mask.detach().cpu() > 0)
    overlay = torch.where(edge[:, None], torch.tensor(OUTLINE_RGB)[None, :, None, None], overlay)
    rows = torch.cat([shown, heat, overlay], dim=-1)  # [N, 3, H, 3W]
    picture = torch.cat(list(rows), dim=-2)  # [3, N·H, 3W]
    picture = picture.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1).clamp(0, 1)
    if key:
        width = size[1] * scale
        overlay_key = swatch_key(width, [(KNOWLEDGE_POINT_RGB, "knowledge point"), (OUTLINE_RGB, "object outline")])
        picture = _with_key(picture, [None, _entropy_key(width, low, high, "all rows"), overlay_key], width)
    return with_column_labels(picture, labels)


def map_rows(
    pictures: Tensor,
    maps: list[Tensor],
    *,
    scale: int = 4,
    labels: Sequence[str] | None = None,
    key: bool = True,
) -> Tensor:
    """One RGB picture ``[3, N·H·scale + key, (1 + len(maps))·W·scale]``: per image (a row) the picture (values in
    [0, 1], ``[N, C, H, W]`` with any ``C``: see :func:`as_rgb`) followed by each map ``[N, H, W]`` coloured
    after per-image min–max scaling; with ``labels`` (one per column, the picture's first), under a strip naming
    the columns; with ``key``, over a colour key under each map's column (the ramp from ``LOW`` to ``HIGH``,
    labelled ``SCALED PER IMAGE``: the colours compare places within one map, never two maps)."""
    if labels is not None and len(labels) != 1 + len(maps):
        raise ValueError(f"`labels` must name the picture and each of the {len(maps)} maps, got {list(labels)}.")
    coloured = [colorize(per_image_unit(m.detach().float().cpu()), 0.0, 1.0) for m in maps]
    rows = torch.cat([as_rgb(pictures.detach().float().cpu()), *coloured], dim=-1)
    picture = torch.cat(list(rows), dim=-2)
    picture = picture.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1).clamp(0, 1)
    if key and maps:
        widths = [pictures.shape[-1] * scale] + [m.shape[-1] * scale for m in maps]
        keys = [None] + [ramp_key(_paint, w, "scaled per image", [("low", "high")]) for w in widths[1:]]
        picture = _with_key(picture, keys, widths)
    return with_column_labels(picture, labels)


_TOKEN_ROWS = ("entropy", "points")
_TOKEN_LEGEND = "points: red knowledge point, green foreground, yellow both"
_TOKEN_MARKS = (((1.0, 0.0, 0.0), "knowledge point"), ((0.0, 1.0, 0.0), "foreground"), ((1.0, 1.0, 0.0), "both"))


def token_strips(
    entropy: Tensor, points: Tensor, foreground: Tensor, *, cell: int = 12, labels: bool = True, key: bool = True
) -> Tensor:
    """One RGB picture ``[3, strip + N·2·cell + key, gutter + T·cell]`` of token units: per sequence a row of cells
    coloured by entropy (low = dark; padding, NaN, black; one scale for all sequences), under it a row marking
    knowledge points (red) and foreground tokens (green; both: yellow). With ``labels`` a gutter names each row's
    kind (``ENTROPY``, ``POINTS``) and a strip on top gives the colours (no gutter or strip with ``labels=False``);
    with ``key`` a colour key at the bottom: the entropy ramp with its ends in nats, and a swatch of each mark.

    Args:
        entropy: ``[N, T]`` entropy per token (NaN at padding).
        points: ``[N, T]`` bool knowledge points.
        foreground: ``[N, T]`` bool foreground tokens.
        cell: pixels per token (at least 7 with ``labels``, a glyph's height).
    """
    values = entropy.detach().float().cpu()
    real = ~values.isnan()
    low, high = (float(values[real].min()), float(values[real].max())) if real.any() else (0.0, 1.0)
    heat = colorize(values.nan_to_num(low)[:, None, :], low, high)[:, :, 0]  # [N, 3, T]
    heat = torch.where(real[:, None], heat, torch.zeros(()))
    marks = torch.zeros_like(heat)
    marks[:, 0] = points.detach().cpu().float()
    marks[:, 1] = foreground.detach().cpu().float() * real
    rows = torch.stack([heat, marks], dim=2)  # [N, 3, 2, T]
    picture = rows.permute(1, 0, 2, 3).reshape(3, -1, values.shape[1])
    picture = picture.repeat_interleave(cell, dim=-2).repeat_interleave(cell, dim=-1)
    picture[:, :, ::cell] = 0.25  # thin separators between tokens
    picture = picture.clamp(0, 1)
    if labels:
        picture = torch.cat([row_labels(_TOKEN_ROWS * values.shape[0], cell), picture], dim=-1)
        picture = torch.cat([label_strip([_TOKEN_LEGEND], picture.shape[-1], scale=1), picture], dim=-2)
    if key:
        width = picture.shape[-1]
        entropy_key = _entropy_key(width, low, high, "all sequences, black: padding", size=1)
        marks_key = swatch_key(width, _TOKEN_MARKS, size=1)
        picture = torch.cat([picture, entropy_key, marks_key], dim=-2)
    return picture


def point_projections(
    points: Tensor,
    entropy: Tensor,
    knowledge_points: Tensor,
    foreground: Tensor,
    *,
    size: int = 96,
    labels: Sequence[str] | None = ("entropy", "knowledge points"),
    key: bool = True,
) -> Tensor:
    """One RGB picture ``[3, strip + N·size + key, 2·size]`` of point clouds seen from above (x–y): per cloud, the
    points coloured by entropy (low = dark; one scale for all clouds), and the knowledge points (red) among object
    points (green) and background points (grey), under a strip naming the columns (``ENTROPY | KNOWLEDGE
    POINTS``; no strip with ``labels=None``) and over a colour key under each column (the entropy ramp with its
    ends in nats; a swatch of each kind of point), none with ``key=False``.

    Args:
        points: ``[N, P, 3]`` point clouds (channels last).
        entropy: ``[N, P]`` entropy per point.
        knowledge_points: ``[N, P]`` bool.
        foreground: ``[N, P]`` bool object points.
        size: pixels per panel side.
    """
    xyz = points.detach().float().cpu()
    values = entropy.detach().float().cpu()
    low, high = float(values.min()), float(values.max())
    heat = colorize(values[:, None, :], low, high)[:, :, 0]  # [N, 3, P]
    kinds = torch.where(
        knowledge_points.cpu()[:, None],
        torch.tensor(KNOWLEDGE_POINT_RGB)[None, :, None],
        torch.where(
            foreground.cpu()[:, None],
            torch.tensor(_OBJECT_POINT_RGB)[None, :, None],
            torch.tensor(_BACKGROUND_POINT_RGB)[None, :, None],
        ),
    )
    span = xyz[..., :2].abs().amax(dim=(1, 2)).clamp(min=1e-6)[:, None, None]
    pixel = ((xyz[..., :2] / span * 0.45 + 0.5) * (size - 1)).round().long().clamp(0, size - 1)  # [N, P, 2]
    order = xyz[..., 2].argsort(dim=1)  # draw low points first, so higher points stay on top
    panels = torch.ones(xyz.shape[0], 3, size, 2 * size)
    for n in range(xyz.shape[0]):
        for colours, offset in ((heat[n], 0), (kinds[n], size)):
            index = order[n]
            row, column = size - 1 - pixel[n, index, 1], pixel[n, index, 0] + offset
            for dy in (0, 1):
                for dx in (0, 1):
                    r, c = (row + dy).clamp(max=size - 1), (column + dx).clamp(max=offset + size - 1)
                    panels[n, :, r, c] = colours[:, index]
    picture = torch.cat(list(panels), dim=-2).clamp(0, 1)
    if key:
        kinds_key = swatch_key(
            size,
            [(KNOWLEDGE_POINT_RGB, "knowledge point"), (_OBJECT_POINT_RGB, "object"), (_BACKGROUND_POINT_RGB, "other")],
        )
        picture = _with_key(picture, [_entropy_key(size, low, high, "all clouds"), kinds_key], size)
    return with_column_labels(picture, labels)


def matrix_picture(
    values: Tensor,
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    low: float,
    high: float,
    cell: int = 24,
    key: bool = True,
    key_title: str = "",
) -> Tensor:
    """A heat map of ``values`` ``[R, C]`` as one RGB picture: each entry a ``cell``-pixel square coloured from
    ``low`` to ``high`` (NaN black), the rows named in a gutter on the left and the columns in a strip on top;
    with ``key``, over a colour key as wide as the picture: ``key_title`` (what the values are), the ramp, and
    its ends ``low`` and ``high`` (the scale is fixed, the same in every picture of the same ``low``/``high``).

    Example::

        >>> tuple(matrix_picture(torch.eye(2), ["a", "b"], ["x", "y"], low=0, high=1).shape)[0]
        3
    """
    if values.dim() != 2 or values.shape != (len(rows), len(columns)):
        raise ValueError(
            f"`values` must be a [{len(rows)}, {len(columns)}] matrix (one row per row name, one column per column "
            f"name), got shape {tuple(values.shape)}."
        )
    values = values.detach().float().cpu()
    missing = ~torch.isfinite(values)
    coloured = colorize(values.nan_to_num(low, high, low), low, high) * ~missing
    picture = coloured.repeat_interleave(cell, dim=-2).repeat_interleave(cell, dim=-1).clamp(0, 1)
    picture = with_column_labels(picture, list(columns))
    gutter = row_labels(list(rows), cell)
    strip = torch.zeros(3, picture.shape[-2] - gutter.shape[-2], gutter.shape[-1])
    picture = torch.cat([torch.cat([strip, gutter.to(picture)], dim=-2), picture], dim=-1)
    if not key:
        return picture
    title = key_title + (", black: no value" if bool(missing.any()) else "")
    ramp = ramp_key(_paint, picture.shape[-1], title, [(number(low), number(high))], size=1)
    return torch.cat([picture, ramp], dim=-2)
