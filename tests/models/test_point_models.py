import pytest
import torch
from torch import nn

from kd_probe.models import EdgeConvNet, PointNet
from kd_probe.models.points import _nearest_neighbours


def _nets() -> list[nn.Module]:
    torch.manual_seed(0)
    return [PointNet(num_classes=4, widths=(8, 16, 32), head_width=16), EdgeConvNet(num_classes=4, k=5, widths=(8, 16))]


@pytest.mark.parametrize("points", [1, 7, 40])
def test_logits_have_one_row_per_cloud_at_any_number_of_points(points: int) -> None:
    for net in _nets():
        net.eval()
        assert net(torch.randn(3, points, 3)).shape == (3, 4)
    assert PointNet()(torch.randn(2, 16, 3)).shape == (2, 5) and EdgeConvNet()(torch.randn(2, 16, 3)).shape == (2, 5)


@pytest.mark.parametrize("index", [0, 1])
def test_logits_do_not_depend_on_the_order_of_the_points(index: int) -> None:
    net = _nets()[index].eval()
    clouds = torch.randn(4, 50, 3)
    shuffled = clouds[:, torch.randperm(50)]
    torch.testing.assert_close(net(shuffled), net(clouds), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_gradients_reach_every_input_point(index: int) -> None:
    net = _nets()[index]
    for _ in range(2):  # a few training steps' worth of BatchNorm statistics, then eval as the probes use it
        net(torch.randn(8, 30, 3))
    net.eval()
    clouds = torch.randn(2, 30, 3, requires_grad=True)
    noise = 0.1 * torch.randn(2, 30, 3)  # the knowledge-point analysis perturbs every point's xyz
    net(clouds + noise).logsumexp(dim=1).sum().backward()
    assert clouds.grad is not None and bool(clouds.grad.isfinite().all())
    assert float(clouds.grad.abs().sum()) > 0
    assert float((clouds.grad.abs().sum(dim=-1) > 0).float().mean()) > 0.1  # many points, not only one


def test_named_layers_exist_and_give_per_point_features() -> None:
    pointnet, edge = _nets()
    outputs: dict[str, torch.Tensor] = {}
    names = {
        pointnet: ["mlp.conv1", "mlp.bn2", "mlp.relu3"],
        edge: ["edge1", "edge2", "edge1.centre", "edge2.neighbour", "edge2.relu", "fuse", "fuse.conv"],
    }
    for net, layers in names.items():
        modules = dict(net.named_modules())
        assert {"head.pool", "head.fc1", "head.fc2"} <= set(modules)
        for name in layers:
            modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        net(torch.randn(2, 20, 3))
    assert outputs["mlp.conv1"].shape == (2, 8, 20) and outputs["mlp.relu3"].shape == (2, 32, 20)
    assert outputs["edge1"].shape == (2, 8, 20) and outputs["edge2"].shape == (2, 16, 20)
    assert outputs["edge1.centre"].shape == (2, 8, 20) and outputs["fuse"].shape == (2, 128, 20)
    assert not any(getattr(m, "inplace", False) for net in names for m in net.modules())


def test_a_point_feature_depends_only_on_its_neighbours_in_the_first_edge_layer() -> None:
    _, edge = _nets()
    edge.eval()
    clouds = torch.randn(1, 30, 3)
    neighbours = _nearest_neighbours(clouds.transpose(1, 2), 5)[0]
    assert torch.equal(neighbours[:, 0], torch.arange(30))  # every point is its own nearest neighbour
    distances = torch.cdist(clouds[0], clouds[0])
    torch.testing.assert_close(distances.gather(1, neighbours), distances.topk(5, largest=False).values)
    far = int(distances[0].argmax())  # moved farther from point 0, it stays out of point 0's neighbours
    moved = clouds.clone()
    moved[0, far] += 0.5 * (clouds[0, far] - clouds[0, 0])
    layer = edge.get_submodule("edge1")
    a, b = layer(clouds.transpose(1, 2)), layer(moved.transpose(1, 2))
    torch.testing.assert_close(a[0, :, 0], b[0, :, 0], atol=0, rtol=0)
    assert not torch.allclose(a[0, :, far], b[0, :, far])


def test_wider_means_more_parameters_and_bad_sizes_are_refused() -> None:
    def count(net: nn.Module) -> int:
        return sum(p.numel() for p in net.parameters())

    assert count(PointNet(widths=(64, 128, 256), head_width=128)) > count(PointNet())
    assert count(EdgeConvNet(widths=(64, 128), head_width=128)) > count(EdgeConvNet())
    with pytest.raises(ValueError, match=r"PointNet needs positive sizes, got num_classes=0, widths=\(32, 64, 128\)"):
        PointNet(num_classes=0)
    with pytest.raises(ValueError, match=r"EdgeConvNet needs positive sizes, got .*k=0"):
        EdgeConvNet(k=0)
    with pytest.raises(ValueError, match=r"widths=\(\)"):
        PointNet(widths=())
    with pytest.raises(ValueError, match=r"PointNet expects point clouds \[N, P, 3\] \(channels last\), got shape"):
        PointNet()(torch.randn(2, 3, 16, 1))
