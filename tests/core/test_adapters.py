import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_probe.core.adapters import Resize
from kd_probe.functional import build_adapter


def test_no_adapter_when_shapes_match() -> None:
    assert build_adapter((4, 16, 8, 8), (4, 16, 8, 8)) is None
    assert build_adapter((4, 10), (4, 10)) is None


def test_conv_adapter_for_maps_and_linear_for_vectors() -> None:
    conv = build_adapter((4, 16, 8, 8), (4, 64, 8, 8))
    assert (
        isinstance(conv, nn.Conv2d)
        and conv.in_channels == 16
        and conv.out_channels == 64
        and conv.kernel_size == (1, 1)
    )
    linear = build_adapter((4, 32), (4, 128))
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (32, 128)


def test_unadaptable_shapes_are_refused_with_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"different spatial sizes: student \(4, 16, 8, 8\), teacher \(4, 64, 4, 4\)"):
        build_adapter((4, 16, 8, 8), (4, 64, 4, 4))
    with pytest.raises(ValueError, match=r"cannot be adapted: student \(4, 16, 8, 8\), teacher \(4, 10\)"):
        build_adapter((4, 16, 8, 8), (4, 10), pair="'a' -> 'b'")


@pytest.mark.parametrize("mode", ["pool", "interpolate"])
def test_resize_matches_the_teachers_height_and_width_before_the_projection(mode: str) -> None:
    adapter = build_adapter((2, 24, 8, 8), (2, 512, 2, 2), resize=mode)
    assert isinstance(adapter, nn.Sequential) and isinstance(adapter[1], nn.Conv2d)
    features = torch.randn(2, 24, 8, 8)
    assert tuple(adapter(features).shape) == (2, 512, 2, 2)
    resized = adapter[0](features)
    if mode == "pool":  # each output cell is the mean of the 4×4 block it covers
        torch.testing.assert_close(resized[:, :, 1, 0], features[:, :, 4:, :4].mean(dim=(2, 3)))
    else:
        torch.testing.assert_close(resized, F.interpolate(features, size=(2, 2), mode="bilinear", align_corners=False))
    same_channels = build_adapter((2, 8, 3, 5), (2, 8, 6, 10), resize=mode)  # enlarging, no projection needed
    assert isinstance(same_channels, Resize) and tuple(same_channels(torch.randn(2, 8, 3, 5)).shape) == (2, 8, 6, 10)


def test_an_unknown_resize_mode_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"`feature_resize` must be one of \('pool', 'interpolate'\) or None, got 'nearest'"
    ):
        build_adapter((2, 8, 4, 4), (2, 8, 2, 2), resize="nearest")
    with pytest.raises(ValueError, match=r"or pass `feature_resize='pool'`"):
        build_adapter((2, 8, 4, 4), (2, 8, 2, 2))


def test_token_sequences_of_the_same_length_get_a_linear_layer_per_token() -> None:
    adapter = build_adapter((2, 17, 32), (2, 17, 64))
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (32, 64)
    tokens = torch.randn(2, 17, 32)
    torch.testing.assert_close(adapter(tokens)[:, 3], adapter(tokens[:, 3]))
    with pytest.raises(ValueError, match=r"student \(2, 17, 32\), teacher \(2, 65, 64\); expected .* token sequences"):
        build_adapter((2, 17, 32), (2, 65, 64))
