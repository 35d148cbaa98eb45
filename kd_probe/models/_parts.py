"""Pieces shared by the built-in CNNs."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def pooled_head(channels: int, num_classes: int) -> nn.Sequential:
    """``head.pool`` (global average pooling), ``head.flatten``, ``head.fc``: works at any image size."""
    return nn.Sequential(
        OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes))
    )


def init_convolutions(model: nn.Module) -> None:
    """He initialisation of every convolution, as for ReLU networks."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
