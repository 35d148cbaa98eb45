import pytest
import torch

from kd_probe.core._font import label_strip
from kd_probe.core.render import knowledge_point_panels, map_rows, point_projections, with_column_labels


def test_map_rows_with_labels_puts_the_strip_above_an_unchanged_grid() -> None:
    pictures, maps = torch.rand(2, 3, 16, 16), [torch.rand(2, 16, 16), torch.rand(2, 16, 16)]
    plain = map_rows(pictures, maps, key=False)
    labels = ("input", "teacher CAM", "student CAM")
    labelled = map_rows(pictures, maps, labels=labels, key=False)
    strip = label_strip(labels, 64)
    assert plain.shape == (3, 2 * 64, 3 * 64)
    assert labelled.shape == (3, strip.shape[1] + 2 * 64, 3 * 64)
    assert torch.equal(labelled[:, : strip.shape[1]], strip)
    assert torch.equal(labelled[:, strip.shape[1] :], plain)


def test_knowledge_point_panels_name_their_three_columns_by_default() -> None:
    images, entropy = torch.rand(2, 3, 8, 8), torch.rand(2, 4, 4)
    points, mask = torch.rand(2, 4, 4) > 0.5, torch.ones(2, 8, 8)
    plain = knowledge_point_panels(images, entropy, points, mask, labels=None, key=False)
    labelled = knowledge_point_panels(images, entropy, points, mask, key=False)
    strip = label_strip(("input", "entropy", "knowledge points"), 32)
    assert plain.shape == (3, 2 * 32, 3 * 32)
    assert torch.equal(labelled, torch.cat([strip, plain], dim=1))


def test_point_projections_name_their_two_columns_by_default() -> None:
    xyz, entropy = torch.randn(1, 20, 3), torch.rand(1, 20)
    points, foreground = torch.rand(1, 20) > 0.5, torch.rand(1, 20) > 0.5
    plain = point_projections(xyz, entropy, points, foreground, size=32, labels=None)
    labelled = point_projections(xyz, entropy, points, foreground, size=32)
    assert torch.equal(labelled, torch.cat([label_strip(("entropy", "knowledge points"), 32), plain], dim=1))


def test_labels_must_match_the_columns() -> None:
    with pytest.raises(ValueError, match=r"`labels` must name the picture and each of the 1 maps, got \['input'\]"):
        map_rows(torch.rand(1, 3, 4, 4), [torch.rand(1, 4, 4)], labels=["input"])
    with pytest.raises(ValueError, match=r"`labels` must name the 10-pixel-wide picture's equally wide columns, got 3"):
        with_column_labels(torch.rand(3, 4, 10), ["a", "b", "c"])
    assert torch.equal(with_column_labels(picture := torch.rand(3, 4, 10), None), picture)


def test_token_strips_name_the_kind_of_every_row_and_give_the_colours() -> None:
    from kd_probe.core._font import row_labels
    from kd_probe.core.render import token_strips

    entropy = torch.rand(3, 10)
    entropy[2, 7:] = float("nan")  # padding
    points, foreground = torch.rand(3, 10) > 0.5, torch.rand(3, 10) > 0.5
    bare = token_strips(entropy, points, foreground, labels=False, key=False)
    assert bare.shape == (3, 3 * 2 * 12, 10 * 12)
    labelled = token_strips(entropy, points, foreground, key=False)
    gutter = row_labels(["entropy", "points"] * 3, 12)
    strip = labelled.shape[1] - bare.shape[1]
    assert strip > 0 and labelled.shape[2] == gutter.shape[2] + bare.shape[2]
    assert torch.equal(labelled[:, strip:, gutter.shape[2] :], bare), "the strips themselves are unchanged"
    assert torch.equal(labelled[:, strip:, : gutter.shape[2]], gutter), "ENTROPY and POINTS rows alternate"
    assert labelled[:, :strip].amax() == 1, "the colour legend is written on top"
