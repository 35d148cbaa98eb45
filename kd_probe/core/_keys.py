"""Colour keys drawn under the TensorBoard image grids, in pure torch with the bitmap font of :mod:`._font`: a
ramp with its end labels for a colour scale, and swatches naming the colours of an overlay.

Every key is white text on black, as the column labels are; a key row puts one key under each column of a grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from kd_probe.core._font import _ADVANCE, GLYPH_HEIGHT, _wrap, text_mask

__all__ = ["key_row", "number", "ramp_key", "swatch_key"]

_LINE = GLYPH_HEIGHT + 2  # a line of text, in font pixels
_BAR = GLYPH_HEIGHT + 1  # the ramp's height, in font pixels


def number(value: float) -> str:
    """A scale's end as the key writes it: three significant digits (``-2.31``, ``0.5``, ``1``)."""
    return f"{value:.3g}"


def _characters(width: int, size: int) -> int:
    """How many characters of ``size``-pixel font fit in ``width`` pixels."""
    return max(1, (width // size + 1) // _ADVANCE)


def _write(canvas: Tensor, text: str, top: int, left: int, size: int) -> None:
    """Draw ``text`` in white into ``canvas`` ``[3, h, w]``, its top left corner at (``top``, ``left``), cut at the
    right edge."""
    mask = text_mask(text).repeat_interleave(size, 0).repeat_interleave(size, 1)
    mask = mask[:, : max(0, canvas.shape[-1] - left)]
    canvas[:, top : top + mask.shape[0], left : left + mask.shape[1]][:, mask] = 1.0


def _text_width(text: str, size: int) -> int:
    return (_ADVANCE * len(text) - 1) * size if text else 0


def ramp_key(
    paint: Callable[[Tensor], Tensor],
    width: int,
    title: str,
    ends: Sequence[tuple[str, str]],
    *,
    size: int | None = None,
) -> Tensor:
    """A key ``[3, h, width]`` for a colour scale: ``title`` (centred, wrapped), a bar from the scale's low end
    (left) to its high end (right), and under it each pair of ``ends`` (the low end's label under the bar's left
    end, the high end's right-aligned under its right end; on two lines when they do not fit on one).

    Args:
        paint: maps values ``[L]`` in [0, 1] to RGB ``[3, L]``; the bar's pixel ``x`` shows ``paint`` of
            ``x / (L − 1)``, so its first and last pixels are the scale's two ends.
        width: the key's width in pixels (the bar's is ``width − 6·size``; less margin on a tiny key).
        size: font pixel size (default ``max(1, width // 96)``, as the column labels).
    """
    size = size or max(1, width // 96)
    margin = min(3 * size, max(0, (width - 2) // 2))  # narrower on a tiny key: a bar of 2 pixels or more
    inner = width - 2 * margin
    characters = _characters(inner, size)
    titles = _wrap(title, characters) if title else []
    lines: list[tuple[str, str]] = []
    for low, high in ends:
        if len(low) + 1 + len(high) <= characters:
            lines.append((low, high))
        else:
            lines.extend([(low, ""), ("", high)])
    height = margin + (len(titles) * _LINE + _BAR + 2 + len(lines) * _LINE) * size + margin
    key = torch.zeros(3, height, width)
    top = margin
    for line in titles:
        _write(key, line, top, margin + max(0, (inner - _text_width(line, size)) // 2), size)
        top += _LINE * size
    bar = paint(torch.linspace(0.0, 1.0, inner)).float().clamp(0, 1)  # [3, inner]
    key[:, top : top + _BAR * size, margin : margin + inner] = bar[:, None, :]
    top += (_BAR + 2) * size
    for low, high in lines:
        _write(key, low, top, margin, size)
        _write(key, high, top, margin + max(0, inner - _text_width(high, size)), size)
        top += _LINE * size
    return key


def swatch_key(
    width: int, entries: Sequence[tuple[tuple[float, float, float], str]], *, size: int | None = None
) -> Tensor:
    """A key ``[3, h, width]`` naming the colours of an overlay: per entry a square swatch of exactly that colour
    followed by its meaning (wrapped, the next lines indented to the text; in a key too narrow for a word beside
    the swatch, the meaning goes on the lines under it).

    Args:
        entries: ``(rgb, meaning)`` pairs, ``rgb`` in [0, 1].
        size: font pixel size (default ``max(1, width // 96)``, as the column labels).
    """
    size = size or max(1, width // 96)
    margin = min(3 * size, max(0, (width - 1) // 2))
    swatch = GLYPH_HEIGHT * size
    indent = margin + swatch + 2 * size
    beside = _characters(max(1, width - indent - margin), size)
    below = _characters(max(1, width - 2 * margin), size)
    layout = []  # per entry: the left edge of its text and its lines (the first beside the swatch, or under it)
    for _, meaning in entries:
        if max(map(len, meaning.split()), default=0) <= beside:
            layout.append((indent, _wrap(meaning, beside)))
        else:
            layout.append((margin, ["", *_wrap(meaning, below)]))
    height = margin + sum(len(lines) for _, lines in layout) * _LINE * size + margin
    key = torch.zeros(3, height, width)
    top = margin
    for (rgb, _), (left, lines) in zip(entries, layout, strict=True):
        key[:, top : top + swatch, margin : margin + swatch] = torch.tensor(rgb, dtype=key.dtype)[:, None, None]
        for line in lines:
            _write(key, line, top, left, size)
            top += _LINE * size
    return key


def key_row(keys: Sequence[Tensor | None], width: int | Sequence[int]) -> Tensor:
    """One strip ``[3, h, Σ widths]`` with each key under its column of ``width`` pixels (one width for all, or
    one per key; ``None``: nothing), all padded with black at the bottom to the tallest key's height ``h``."""
    widths = [width] * len(keys) if isinstance(width, int) else list(width)
    height = max((key.shape[-2] for key in keys if key is not None), default=0)
    cells = []
    for key, width in zip(keys, widths, strict=True):
        cell = torch.zeros(3, height, width)
        if key is not None:
            cell[:, : key.shape[-2], : key.shape[-1]] = key[:, :, :width]
        cells.append(cell)
    return torch.cat(cells, dim=-1)
