"""Small look-alikes of the networks users bring, in plain torch (no torchvision, no timm).

Each reproduces the traits of the real architecture that matter to the probes, with the real
module names, at a width small enough for CPU tests:

- `resnet18_like`: torchvision's ResNet-18 layout (``conv1``, ``bn1``, ``relu``, ``maxpool``,
  ``layer1..layer4`` of two ``BasicBlock``s with ``downsample``, ``avgpool``, ``fc``) and its
  ``ReLU(inplace=True)`` and in-place residual add, which overwrite the BatchNorm outputs.
- `mobilenetv3_like`: MobileNetV3-small traits: ``features.N`` blocks, hardswish,
  squeeze-excitation, inverted residuals, ``classifier`` of Linear-Hardswish-Dropout-Linear.
- `vit_like`: a ViT whose ``blocks.N`` and ``norm`` output tokens ``[N, 1 + H·W, D]``.

`copy_without_inplace` gives the twin of a network with every in-place activation turned off,
to compare what a probe reads on both.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["copy_without_inplace", "mobilenetv3_like", "resnet18_like", "vit_like"]


# ----------------------------------------------------------------------------- ResNet-18


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``, forward line for line."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, *, inplace: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.inplace = inplace  # False: the residual add too is out of place (the twin's reference)

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        if self.inplace:
            out += identity  # torchvision: overwrites what `bn2` returned
        else:
            out = out + identity
        out = self.relu(out)

        return out


class ResNet18Like(nn.Module):
    """torchvision's ``ResNet`` with ``BasicBlock`` and layers ``[2, 2, 2, 2]``."""

    def __init__(self, num_classes: int = 10, *, width: int = 64, inplace: bool = True) -> None:
        super().__init__()
        self.inplanes = width
        self.inplace = inplace
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=inplace)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, 2)
        self.layer2 = self._make_layer(2 * width, 2, stride=2)
        self.layer3 = self._make_layer(4 * width, 2, stride=2)
        self.layer4 = self._make_layer(8 * width, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, inplace=self.inplace)]
        self.inplanes = planes
        layers.extend(BasicBlock(self.inplanes, planes, inplace=self.inplace) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x


def resnet18_like(num_classes: int = 10, *, width: int = 64, inplace: bool = True) -> nn.Module:
    """A ResNet-18 with torchvision's names; ``width=64`` is the real one (about 11M parameters)."""
    return ResNet18Like(num_classes, width=width, inplace=inplace)


# ----------------------------------------------------------------------------- MobileNetV3


def _make_divisible(value: float, divisor: int = 8) -> int:
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def _activation(name: str, inplace: bool) -> nn.Module:
    return nn.Hardswish(inplace=inplace) if name == "HS" else nn.ReLU(inplace=inplace)


class Conv2dNormActivation(nn.Sequential):
    """Conv-BN-activation, named ``0``, ``1``, ``2`` as in torchvision."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: nn.Module | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation)
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision's ``SqueezeExcitation`` with ReLU and hardsigmoid."""

    def __init__(self, input_channels: int, squeeze_channels: int, *, inplace: bool = True) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU(inplace=inplace)
        self.scale_activation = nn.Hardsigmoid(inplace=inplace)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        scale = self.scale_activation(scale)
        return scale * x


class InvertedResidual(nn.Module):
    """Expansion 1×1, depthwise k×k, optional squeeze-excitation, projection 1×1, residual."""

    def __init__(
        self,
        in_channels: int,
        kernel: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
        *,
        inplace: bool = True,
    ) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(
                Conv2dNormActivation(
                    in_channels, expanded_channels, kernel_size=1, activation=_activation(activation, inplace)
                )
            )
        layers.append(
            Conv2dNormActivation(
                expanded_channels,
                expanded_channels,
                kernel_size=kernel,
                stride=stride,
                groups=expanded_channels,
                activation=_activation(activation, inplace),
            )
        )
        if use_se:
            layers.append(
                SqueezeExcitation(expanded_channels, _make_divisible(expanded_channels // 4), inplace=inplace)
            )
        layers.append(Conv2dNormActivation(expanded_channels, out_channels, kernel_size=1, activation=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            if self.inplace:
                result += x  # torchvision: overwrites what the projection's BatchNorm returned
            else:
                result = result + x
        return result


class MobileNetV3Like(nn.Module):
    """A few blocks of MobileNetV3-small, scaled by ``width`` (16 = the real stem; at most ``6·width`` channels)."""

    def __init__(self, num_classes: int = 10, *, width: int = 16, inplace: bool = True) -> None:
        super().__init__()

        def channels(multiple: float) -> int:
            return _make_divisible(width * multiple)

        # (kernel, expanded, out, use_se, activation, stride) in units of `width`: MobileNetV3-small's first blocks
        settings = [
            (3, 1.0, 1.0, True, "RE", 2),
            (3, 4.5, 1.5, False, "RE", 2),
            (3, 5.5, 1.5, False, "RE", 1),
            (5, 6.0, 2.5, True, "HS", 2),
            (5, 6.0, 2.5, True, "HS", 1),
        ]
        stem = channels(1.0)
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, stem, kernel_size=3, stride=2, activation=nn.Hardswish(inplace=inplace))
        ]
        in_channels = stem
        for kernel, expanded, out, use_se, activation, stride in settings:
            out_channels = channels(out)
            layers.append(
                InvertedResidual(
                    in_channels,
                    kernel,
                    channels(expanded),
                    out_channels,
                    use_se,
                    activation,
                    stride,
                    inplace=inplace,
                )
            )
            in_channels = out_channels
        last_channels = channels(6.0)
        layers.append(
            Conv2dNormActivation(in_channels, last_channels, kernel_size=1, activation=nn.Hardswish(inplace=inplace))
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = channels(4.0)
        self.classifier = nn.Sequential(
            nn.Linear(last_channels, hidden),
            nn.Hardswish(inplace=inplace),
            nn.Dropout(p=0.2, inplace=inplace),
            nn.Linear(hidden, num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def mobilenetv3_like(num_classes: int = 10, *, width: int = 16, inplace: bool = True) -> nn.Module:
    """A MobileNetV3-small look-alike: ``features.0`` stem, five inverted residual blocks, a 1×1 head."""
    return MobileNetV3Like(num_classes, width=width, inplace=inplace)


# ----------------------------------------------------------------------------- ViT


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return x


class ViTLike(nn.Module):
    """Patch-embedding conv, class token, learned position embedding, ``blocks.N``, ``norm``, ``head``."""

    def __init__(
        self,
        num_classes: int = 10,
        *,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"`image_size`={image_size} is not a multiple of `patch_size`={patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid_size**2, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [N, H·W, D]
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.pos_embed
        tokens = self.blocks(tokens)
        tokens = self.norm(tokens)
        return self.head(tokens[:, 0])


def vit_like(
    num_classes: int = 10, *, image_size: int = 32, patch_size: int = 4, dim: int = 32, depth: int = 2, heads: int = 4
) -> nn.Module:
    """A small ViT: tokens ``[N, 1 + (image_size / patch_size)², dim]`` after every block."""
    return ViTLike(num_classes, image_size=image_size, patch_size=patch_size, dim=dim, depth=depth, heads=heads)


# ----------------------------------------------------------------------------- twins


def copy_without_inplace(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every module's ``inplace`` attribute set to False.

    Same weights, buffers and train/eval modes; the in-place activations are turned off, and so
    are the look-alikes' in-place residual adds (``out += identity`` becomes ``out = out + identity``),
    which otherwise overwrite what ``bn2`` returned even with out-of-place ReLUs.
    """
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
    return twin
