import pytest
import torch

from kd_probe.core._font import GLYPH_HEIGHT, glyph, label_strip, text_mask

A = [
    ".###.",
    "#...#",
    "#...#",
    "#####",
    "#...#",
    "#...#",
    "#...#",
]


def _bitmap(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows])


def test_a_is_drawn_with_its_known_bitmap_and_lowercase_as_uppercase() -> None:
    assert torch.equal(glyph("A"), _bitmap(A))
    assert torch.equal(glyph("a"), glyph("A"))
    assert torch.equal(glyph("§"), glyph("?")) and glyph("?").any()
    assert not glyph(" ").any()


def test_every_glyph_differs_from_every_other() -> None:
    characters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:-_+=/()%'?"
    bitmaps = {tuple(glyph(c).flatten().tolist()) for c in characters}
    assert len(bitmaps) == len(characters)


def test_text_is_glyphs_with_one_blank_column_between() -> None:
    line = text_mask("AB")
    assert line.shape == (GLYPH_HEIGHT, 11)
    assert torch.equal(line[:, :5], glyph("A")) and not line[:, 5].any() and torch.equal(line[:, 6:], glyph("B"))
    assert text_mask("").shape == (GLYPH_HEIGHT, 0)


def test_a_label_strip_centres_white_text_on_black_over_each_column() -> None:
    strip = label_strip(["A", "B"], 20)
    assert strip.shape == (3, 2 + 9, 40)  # a 2-pixel margin, one line of 7 + 2 pixels
    assert torch.equal(strip[0], strip[1]) and torch.equal(strip[0], strip[2])
    assert set(strip.unique().tolist()) == {0.0, 1.0}
    expected = torch.zeros(11, 40, dtype=torch.bool)
    expected[2:9, 7:12] = glyph("A")  # (20 - 5) // 2 = 7
    expected[2:9, 27:32] = glyph("B")
    assert torch.equal(strip[0] > 0.5, expected)


@pytest.mark.parametrize(
    ("width", "lines"),
    [(64, 2), (128, 1)],  # 10 characters fit in 64 pixels: "KNOWLEDGE" / "POINTS"
)
def test_long_labels_wrap_at_word_boundaries(width: int, lines: int) -> None:
    strip = label_strip(["input", "knowledge points"], width)
    assert strip.shape == (3, 2 + 9 * lines, 2 * width)
    inked = (strip[0, :, width:] > 0.5).any(dim=1)
    assert [bool(inked[2 + 9 * line : 9 + 9 * line].any()) for line in range(lines)] == [True] * lines


def test_wide_columns_draw_larger_glyphs() -> None:
    strip = label_strip(["A"], 200)  # 200 // 96 = 2 pixels per font pixel
    assert strip.shape == (3, 4 + 18, 200)
    rows, columns = (strip[0] > 0.5).nonzero(as_tuple=True)
    drawn = strip[0, int(rows.min()) : int(rows.max()) + 1, int(columns.min()) : int(columns.max()) + 1] > 0.5
    assert torch.equal(drawn, glyph("A").repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_row_labels_write_each_label_in_its_own_band() -> None:
    from kd_probe.core._font import row_labels

    column = row_labels(["entropy", "kp"], 12)
    assert column.shape == (3, 24, text_mask("entropy").shape[1] + 4)
    for band, label in enumerate(["entropy", "kp"]):
        top = band * 12 + (12 - GLYPH_HEIGHT) // 2
        mask = text_mask(label)
        drawn = column[0, top : top + GLYPH_HEIGHT, 2 : 2 + mask.shape[1]] == 1
        assert torch.equal(drawn, mask)
        assert column[0, band * 12 : (band + 1) * 12].sum() == mask.sum(), "nothing else in the band"
    with pytest.raises(ValueError, match=r"`height` must be at least 7 pixels .* got 6"):
        row_labels(["x"], 6)


def test_a_label_strip_can_keep_small_glyphs_on_a_wide_strip() -> None:
    assert label_strip(["AB"], 400, scale=1).shape[1] == GLYPH_HEIGHT + 4
    assert label_strip(["AB"], 400).shape[1] == 4 * (GLYPH_HEIGHT + 2) + 8
