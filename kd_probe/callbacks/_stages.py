"""The stage outputs of a convolutional network: the layers a similarity probe compares by default (methods §7)."""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn

from kd_probe.core.layers import eval_forward, unwrap_compiled

__all__ = ["stage_outputs"]

_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def stage_outputs(network: nn.Module, example: Tensor, argument: str = "layers") -> list[str]:
    """The last module of each stage of ``network``: in execution order, the leaf modules with feature-map
    outputs ``[N, C, H, W]`` after which the next such output is spatially smaller (a strided convolution or a
    pooling comes next), and the last feature-map module before the head; pooling modules themselves are left
    out. Found with one eval-mode forward of ``example`` (modes restored). A ``ValueError`` naming ``argument``
    when the network has no feature maps (a transformer, a point network: name the layers).

    Example::

        >>> from kd_probe.models import VGG
        >>> import torch
        >>> stage_outputs(VGG(3, widths=(4, 8)), torch.zeros(1, 3, 8, 8))
        ['features.relu2', 'features.relu4']
    """
    network = unwrap_compiled(network)
    order: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, module in network.named_modules():
        if next(module.children(), None) is None and not isinstance(module, _POOLING):

            def record(_: nn.Module, __: object, output: object, name: str = name) -> None:
                if isinstance(output, Tensor) and output.dim() == 4:
                    order.append((name, tuple(output.shape[-2:])))

            hooks.append(module.register_forward_hook(record))
    try:
        eval_forward(network, example)
    finally:
        for hook in hooks:
            hook.remove()
    stages = [name for (name, size), (_, after) in pairwise(order) if after < size]
    if order:
        stages.append(order[-1][0])
    stages = list(dict.fromkeys(stages))
    if not stages:
        raise ValueError(
            f"`{argument}` has no default for {type(network).__name__}: it computes no feature maps [N, C, H, W]; "
            "name the layers to compare."
        )
    return stages
