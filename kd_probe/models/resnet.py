"""A small ResNet-style CNN with readable layer names (no torchvision)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from kd_probe.models._parts import init_convolutions, pooled_head

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection: ``conv1, bn1, relu1, conv2, bn2, (shortcut), relu2``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-style CNN for small images: a 3×3 stem, stages of basic blocks, global pooling.

    Names: ``stem.conv``, ``stem.bn``, ``stem.relu``; ``layer{s}.{b}.conv1`` … ``layer{s}.{b}.relu2``
    (stage ``s`` from 1, block ``b`` from 0; stages after the first halve the resolution); ``head.pool``,
    ``head.flatten``, ``head.fc``. ReLUs are not in-place.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        widths: channels of each stage.
        blocks_per_stage: basic blocks in each stage (one int for all stages, or one per stage).

    Example::

        >>> net = ResNet(num_classes=6, widths=(32, 64, 128), blocks_per_stage=2)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 6])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int | Sequence[int] = 2,
    ) -> None:
        super().__init__()
        blocks = [blocks_per_stage] * len(widths) if isinstance(blocks_per_stage, int) else list(blocks_per_stage)
        if (
            num_classes < 1
            or in_channels < 1
            or not widths
            or min(widths) < 1
            or len(blocks) != len(widths)
            or min(blocks) < 1
        ):
            raise ValueError(
                f"ResNet needs positive sizes and one block count per stage, got num_classes={num_classes}, "
                f"in_channels={in_channels}, widths={tuple(widths)}, blocks_per_stage={blocks_per_stage}."
            )
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                bn=nn.BatchNorm2d(widths[0]),
                relu=nn.ReLU(),
            )
        )
        channels = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True), start=1):
            stage_blocks = []
            for b in range(count):
                stride = 2 if stage > 1 and b == 0 else 1
                stage_blocks.append(BasicBlock(channels, width, stride))
                channels = width
            self.add_module(f"layer{stage}", nn.Sequential(*stage_blocks))
        self.num_stages = len(widths)
        self.head = pooled_head(channels, num_classes)
        init_convolutions(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.head(x)
