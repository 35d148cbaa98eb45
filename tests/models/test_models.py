import pytest
import torch
from torch import nn

from kd_probe.models import VGG, ResNet


@pytest.mark.parametrize("size", [16, 32, 37])
def test_models_give_logits_at_any_image_size(size: int) -> None:
    x = torch.randn(2, 3, size, size)
    assert VGG(num_classes=5)(x).shape == (2, 5)
    assert ResNet(num_classes=5, widths=(8, 16), blocks_per_stage=(1, 2))(x).shape == (2, 5)


def test_layer_names_are_readable_and_relus_not_in_place() -> None:
    vgg = dict(VGG(num_classes=4, widths=(8, 16), convs_per_stage=2).named_modules())
    assert {"features.conv1", "features.bn4", "features.relu4", "features.pool2", "head.fc"} <= set(vgg)
    resnet = dict(ResNet(num_classes=4, widths=(8, 16), blocks_per_stage=2).named_modules())
    assert {"stem.conv", "layer1.1.conv2", "layer2.0.shortcut.conv", "head.fc"} <= set(resnet)
    assert not any(getattr(m, "inplace", False) for m in [*vgg.values(), *resnet.values()] if isinstance(m, nn.ReLU))


def test_wider_and_deeper_means_more_parameters() -> None:
    def count(net: nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())

    assert count(VGG(widths=(32, 64, 128))) > count(VGG(widths=(16, 32, 64)))
    assert count(ResNet(blocks_per_stage=2)) > count(ResNet(blocks_per_stage=1))


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"VGG needs positive sizes, got num_classes=0"):
        VGG(num_classes=0)
    with pytest.raises(ValueError, match=r"blocks_per_stage=\(1, 1, 1\)"):
        ResNet(widths=(8, 16), blocks_per_stage=(1, 1, 1))
