import torch
from torch import nn

from kd_probe import estimate_sigma_maps
from kd_probe.core._feature_graph import truncated_graph
from kd_probe.functional import capture_outputs
from kd_probe.models import VGG, ResNet


def _trained_looking_vgg() -> VGG:
    torch.manual_seed(0)
    net = VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):  # statistics far from the identity, as after training
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _full_forward_feature(net: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    with capture_outputs(net, [layer]) as outputs:
        net(x)
    return outputs[layer]


def test_the_graph_stops_at_the_layer_folds_batchnorm_and_keeps_the_feature() -> None:
    net, x = _trained_looking_vgg(), torch.randn(4, 3, 16, 16)
    graph = truncated_graph(net, "features.relu2")
    assert graph is not None
    called = {node.target for node in graph.graph.nodes if node.op == "call_module"}
    assert not any(isinstance(graph.get_submodule(name), nn.BatchNorm2d) for name in called)
    assert "head.fc" not in called and "features.pool2" not in called
    with torch.no_grad():
        torch.testing.assert_close(graph(x), _full_forward_feature(net, "features.relu2", x), rtol=1e-5, atol=1e-6)
    assert net.features.bn1.running_var.min() > 0.19  # the model's own modules are untouched


def test_a_container_layer_is_kept_as_one_call() -> None:
    torch.manual_seed(0)
    net, x = ResNet(num_classes=3, widths=(4, 8), blocks_per_stage=1).eval(), torch.randn(2, 3, 16, 16)
    graph = truncated_graph(net, "layer1.0")
    assert graph is not None
    with torch.no_grad():
        torch.testing.assert_close(graph(x), _full_forward_feature(net, "layer1.0", x))


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # not traceable with torch.fx
            x = -x
        return self.bn(self.conv(x))


def test_untraceable_models_fall_back_to_the_plain_forward() -> None:
    torch.manual_seed(0)
    net, x = _DataDependent().eval(), torch.randn(2, 3, 8, 8)
    assert truncated_graph(net, "bn") is None
    fast = estimate_sigma_maps(net, x, layer="bn", grid=4, samples=4, steps=5)
    plain = estimate_sigma_maps(net, x, layer="bn", grid=4, samples=4, steps=5, fold_batchnorm=False)
    assert torch.equal(fast.sigma, plain.sigma)


def test_folded_and_plain_paths_give_the_same_maps() -> None:
    net, x = _trained_looking_vgg(), torch.randn(3, 3, 16, 16)
    options = dict(layer="features.bn2", grid=8, samples=8, steps=30)
    fast = estimate_sigma_maps(net, x, **options)
    plain = estimate_sigma_maps(net, x, fold_batchnorm=False, channels_last=False, **options)
    torch.testing.assert_close(fast.sigma, plain.sigma, atol=1e-5, rtol=0)
    assert torch.equal(fast.step, plain.step)


def test_a_hook_that_changes_outputs_disables_the_folded_path() -> None:
    net, x = _trained_looking_vgg(), torch.randn(2, 3, 16, 16)
    net.features.conv1.register_forward_hook(lambda _m, _i, out: out * 0.5)  # e.g. a pruning mask
    options = dict(layer="features.relu2", grid=4, samples=4, steps=5)
    fast = estimate_sigma_maps(net, x, **options)
    plain = estimate_sigma_maps(net, x, fold_batchnorm=False, **options)
    assert torch.equal(fast.sigma, plain.sigma)
