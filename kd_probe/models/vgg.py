"""A small VGG-style CNN with readable layer names (no torchvision)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from kd_probe.models._parts import init_convolutions, pooled_head

__all__ = ["VGG"]


class VGG(nn.Module):
    """VGG-style CNN: stages of 3×3 conv → BatchNorm → ReLU, each stage ending in 2×2 max-pooling.

    Layer names are numbered globally so they are easy to name in ``feature_pairs`` or a probe's
    ``layer``: ``features.conv1``, ``features.bn1``, ``features.relu1``, …, ``features.pool1`` (after
    stage 1), …, then ``head.pool`` (global average pooling), ``head.flatten``, ``head.fc``. The
    output of ``features.conv{i}`` is pre-BatchNorm and pre-ReLU; ReLUs are not in-place so hooked
    outputs are never overwritten. Global pooling makes the network work at any image size.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        widths: channels of each stage; its length is the number of stages.
        convs_per_stage: 3×3 convolutions per stage.
        batch_norm: add BatchNorm after each convolution.

    Example::

        >>> net = VGG(num_classes=6, widths=(16, 32, 64), convs_per_stage=2)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        convs_per_stage: int = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or convs_per_stage < 1 or not widths or min(widths) < 1:
            raise ValueError(
                f"VGG needs positive sizes, got num_classes={num_classes}, in_channels={in_channels}, "
                f"widths={tuple(widths)}, convs_per_stage={convs_per_stage}."
            )
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, index = in_channels, 0
        for stage, width in enumerate(widths, start=1):
            for _ in range(convs_per_stage):
                index += 1
                layers[f"conv{index}"] = nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm)
                if batch_norm:
                    layers[f"bn{index}"] = nn.BatchNorm2d(width)
                layers[f"relu{index}"] = nn.ReLU()
                channels = width
            layers[f"pool{stage}"] = nn.MaxPool2d(2, ceil_mode=True)
        self.features = nn.Sequential(layers)
        self.head = pooled_head(channels, num_classes)
        init_convolutions(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
