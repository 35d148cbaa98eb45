import pytest
from torch import nn

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
