"""Small point-cloud networks with readable layer names (pure torch): ``PointNet`` and ``EdgeConvNet``.

Both take channels-last clouds ``[N, P, 3]`` and return logits ``[N, num_classes]``; every named per-point
layer outputs features ``[N, C, P]`` (one column per point, in the input's order), so a probe can read what a
layer keeps about each point. The forward is differentiable with respect to the input points (the
knowledge-point analysis perturbs each point's xyz and follows the gradient); only the choice of
neighbours in ``EdgeConvNet`` is not.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["EdgeConv", "EdgeConvNet", "PointNet"]


def _check_points(points: Tensor, owner: str) -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"{owner} expects point clouds [N, P, 3] (channels last), got shape {tuple(points.shape)}.")


def _check_sizes(owner: str, **sizes: int | Sequence[int]) -> None:
    """One sentence naming every size when one is not a positive int (or ``widths`` is empty)."""
    groups = [tuple(v) if isinstance(v, Sequence) else (v,) for v in sizes.values()]
    if not all(group and all(isinstance(v, int) and v >= 1 for v in group) for group in groups):
        described = ", ".join(f"{k}={tuple(v) if isinstance(v, Sequence) else v!r}" for k, v in sizes.items())
        raise ValueError(f"{owner} needs positive sizes, got {described}.")


def _point_head(channels: int, head_width: int, num_classes: int) -> nn.Sequential:
    """``head.pool`` (global max over points), ``head.flatten``, ``head.fc1``, ``head.bn1``, ``head.relu1``,
    ``head.fc2``: a symmetric function of the points, so the logits do not depend on their order."""
    return nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveMaxPool1d(1),
            flatten=nn.Flatten(),
            fc1=nn.Linear(channels, head_width, bias=False),
            bn1=nn.BatchNorm1d(head_width),
            relu1=nn.ReLU(),
            fc2=nn.Linear(head_width, num_classes),
        )
    )


class PointNet(nn.Module):
    """PointNet (without the alignment networks): a shared per-point MLP, a global max-pool, an MLP head.

    The per-point MLP is 1×1 convolutions over the points, named ``mlp.conv1``, ``mlp.bn1``, ``mlp.relu1``,
    ``mlp.conv2``, …, each with output ``[N, C, P]`` (``mlp.conv{i}`` pre-BatchNorm, ReLUs not in-place);
    then ``head.pool`` (max over points), ``head.fc1``, ``head.bn1``, ``head.relu1``, ``head.fc2``.

    Args:
        num_classes: number of output logits.
        widths: channels of each per-point layer; its length is the number of layers.
        head_width: width of the hidden layer of the head.

    Example::

        >>> net = PointNet(num_classes=5)
        >>> net(torch.randn(2, 128, 3)).shape
        torch.Size([2, 5])
    """

    def __init__(self, num_classes: int = 5, widths: Sequence[int] = (32, 64, 128), head_width: int = 64) -> None:
        super().__init__()
        _check_sizes("PointNet", num_classes=num_classes, widths=widths, head_width=head_width)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        for index, width in enumerate(widths, start=1):
            layers[f"conv{index}"] = nn.Conv1d(channels, width, 1, bias=False)
            layers[f"bn{index}"] = nn.BatchNorm1d(width)
            layers[f"relu{index}"] = nn.ReLU()
            channels = width
        self.mlp = nn.Sequential(layers)
        self.head = _point_head(channels, head_width, num_classes)

    def forward(self, points: Tensor) -> Tensor:
        _check_points(points, "PointNet")
        return self.head(self.mlp(points.transpose(1, 2)))


def _nearest_neighbours(features: Tensor, k: int) -> Tensor:
    """Indices ``[N, P, k]`` of the ``k`` nearest points of every point (itself first) in ``features``
    ``[N, C, P]`` (Euclidean). The choice is not differentiable and needs none: it is made without gradients."""
    with torch.no_grad():
        x = features.transpose(1, 2)
        squared = x.pow(2).sum(-1)
        distance = squared.unsqueeze(2) - 2 * x @ x.transpose(1, 2) + squared.unsqueeze(1)
        distance.diagonal(dim1=1, dim2=2).fill_(-1.0)  # a point is its own nearest neighbour, whatever rounding says
        return distance.topk(min(k, x.shape[1]), dim=-1, largest=False).indices


class EdgeConv(nn.Module):
    """EdgeConv (DGCNN): for each point ``i`` and each of its ``k`` nearest neighbours ``j``, a shared linear
    map of the edge feature ``[x_i, x_j − x_i]``, the maximum over the neighbours, then ``bn`` and ``relu``:
    ``[N, C_in, P]`` → ``[N, C_out, P]``.

    The edge feature is linear in ``x_i`` and ``x_j``, so its linear map is ``centre(x)_i + neighbour(x)_j``
    (two 1×1 convolutions over the points, outputs ``[N, C_out, P]``; the same family of maps as one 1×1
    convolution of ``[x_i, x_j − x_i]``), and the maximum over the edges is ``centre(x)_i + max_j
    neighbour(x)_j``. DGCNN normalises each edge before the maximum; here the maximum comes first, then
    BatchNorm and LeakyReLU on the per-point result. In eval mode that gives the same features whenever
    BatchNorm's scale is positive (both maps are then increasing, and a maximum commutes with increasing
    maps), and the ``k``-fold tensor of activations is never held, which makes the layer several times faster
    on a CPU. The neighbours are chosen on the input of the layer (xyz for the first one, learned features
    after: the graph is dynamic); gathering their features is differentiable. With fewer than ``k`` points,
    all of them are neighbours.
    """

    def __init__(self, in_channels: int, out_channels: int, k: int = 16) -> None:
        super().__init__()
        self.k = k
        self.centre = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.neighbour = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm1d(out_channels)
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        count, _, points = x.shape
        neighbours = _nearest_neighbours(x, self.k)  # [N, P, k]
        k = neighbours.shape[-1]
        rows = (neighbours + points * torch.arange(count, device=x.device).view(-1, 1, 1)).flatten()
        other = self.neighbour(x).transpose(1, 2).reshape(count * points, -1)  # one row per point
        strongest = other[rows].view(count, points, k, -1).max(dim=2).values.transpose(1, 2)  # [N, C, P]
        return self.relu(self.bn(self.centre(x) + strongest))


class EdgeConvNet(nn.Module):
    """A small DGCNN: EdgeConv layers ``edge1``, ``edge2``, … (each with ``centre``, ``neighbour``, ``bn``,
    ``relu``; see :class:`EdgeConv`), whose outputs ``[N, C, P]`` are concatenated and fused per point by
    ``fuse`` (1×1 conv ``fuse.conv``, ``fuse.bn``, ``fuse.relu``; output ``[N, fuse_width, P]``), then the
    head of :class:`PointNet` (``head.pool``, a global max over the points, ``head.fc1``, …, ``head.fc2``).
    The neighbours of the first layer are the nearest points in xyz, those of the later layers the nearest in
    the previous layer's features. Activations are LeakyReLU(0.2), as in DGCNN, and never in-place.

    Args:
        num_classes: number of output logits.
        k: neighbours per point in every EdgeConv layer.
        widths: channels of each EdgeConv layer; its length is the number of layers.
        head_width: width of the hidden layer of the head.
        fuse_width: channels of ``fuse``.

    Example::

        >>> net = EdgeConvNet(num_classes=5, k=8)
        >>> net(torch.randn(2, 64, 3)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        num_classes: int = 5,
        k: int = 16,
        widths: Sequence[int] = (32, 64),
        head_width: int = 64,
        fuse_width: int = 128,
    ) -> None:
        super().__init__()
        _check_sizes(
            "EdgeConvNet", num_classes=num_classes, k=k, widths=widths, head_width=head_width, fuse_width=fuse_width
        )
        channels, self._edge_names = 3, tuple(f"edge{index}" for index in range(1, len(widths) + 1))
        for name, width in zip(self._edge_names, widths, strict=True):
            self.add_module(name, EdgeConv(channels, width, k))
            channels = width
        self.fuse = nn.Sequential(
            OrderedDict(
                conv=nn.Conv1d(sum(widths), fuse_width, 1, bias=False),
                bn=nn.BatchNorm1d(fuse_width),
                relu=nn.LeakyReLU(0.2),
            )
        )
        self.head = _point_head(fuse_width, head_width, num_classes)

    def forward(self, points: Tensor) -> Tensor:
        _check_points(points, "EdgeConvNet")
        x, outputs = points.transpose(1, 2), []
        for name in self._edge_names:
            x = getattr(self, name)(x)
            outputs.append(x)
        return self.head(self.fuse(torch.cat(outputs, dim=1)))
