import pytest
import torch
from torch import Tensor, nn

from kd_probe.core.layers import eval_forward, probing, uncompiled, unwrap_compiled
from kd_probe.functional import capture_outputs, forward_until, modules_through, resolve_layer
from kd_probe.models import VGG, ResNet


def test_unknown_layer_lists_close_matches() -> None:
    with pytest.raises(ValueError) as error:
        resolve_layer(VGG(num_classes=3), "features.cnv2", argument="feature_pairs")
    message = str(error.value)
    assert message.startswith("`feature_pairs`='features.cnv2' is not a module of VGG; close matches: ")
    assert "'features.conv2'" in message


def test_unknown_layer_without_close_names_still_suggests_names() -> None:
    with pytest.raises(ValueError, match=r"close matches: 'stem', "):
        resolve_layer(ResNet(num_classes=3), "zzz")


def test_capture_outputs_records_the_module_output_and_removes_its_hooks() -> None:
    net = VGG(num_classes=3, widths=(4,), convs_per_stage=1).eval()
    x = torch.randn(2, 3, 8, 8)
    with capture_outputs(net, ["features.conv1", "head.fc"]) as outputs:
        logits = net(x)
    torch.testing.assert_close(outputs["features.conv1"], net.features.conv1(x))
    torch.testing.assert_close(outputs["head.fc"], logits)
    assert all(not m._forward_hooks for m in net.modules())


def test_capture_outputs_removes_hooks_on_error() -> None:
    net = VGG(num_classes=3, widths=(4,), convs_per_stage=1)
    with pytest.raises(RuntimeError), capture_outputs(net, ["features.conv1"]):
        net(torch.randn(2, 5, 8, 8))  # wrong channel count
    assert all(not m._forward_hooks for m in net.modules())


def test_modules_through_follows_execution_order_in_a_resnet() -> None:
    net = ResNet(num_classes=3, widths=(4, 8), blocks_per_stage=1)
    names = modules_through(net, "layer2.0.conv2", torch.zeros(1, 3, 8, 8))
    assert names == [
        "stem.conv",
        "stem.bn",
        "stem.relu",
        "stem",
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu1",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.shortcut",
        "layer1.0.relu2",
        "layer1.0",
        "layer1",
        "layer2.0.conv1",
        "layer2.0.bn1",
        "layer2.0.relu1",
        "layer2.0.conv2",
    ]  # not layer2.0.bn2, the shortcut of layer2.0 (run after conv2), nor the parents layer2.0/layer2


def test_modules_through_a_container_includes_its_children() -> None:
    net = VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)
    names = modules_through(net, "features", torch.zeros(1, 3, 8, 8))
    assert names[-1] == "features" and "features.pool2" in names and "head.fc" not in names


def test_eval_forward_restores_modes_and_leaves_batchnorm_untouched() -> None:
    net = VGG(num_classes=3, widths=(4,), convs_per_stage=1).train()
    net.head.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    eval_forward(net, torch.randn(4, 3, 8, 8))
    assert net.training and net.features.bn1.training and not net.head.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_modules_through_refuses_a_layer_that_never_runs() -> None:
    net = VGG(num_classes=3, widths=(4,), convs_per_stage=1)
    net.unused = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"`layer`='unused' exists but did not run"):
        modules_through(net, "unused", torch.zeros(1, 3, 8, 8))


def test_forward_until_equals_the_full_forward_and_skips_later_layers() -> None:
    net = VGG(num_classes=3, widths=(4, 8), convs_per_stage=1).eval()
    x = torch.randn(2, 3, 8, 8)
    calls = []
    handle = net.features.conv2.register_forward_hook(lambda *_: calls.append(1))
    early = forward_until(net, "features.relu1", x)
    assert calls == []  # nothing after the layer ran
    handle.remove()
    with capture_outputs(net, ["features.relu1"]) as outputs:
        net(x)
    assert torch.equal(early, outputs["features.relu1"])
    assert all(not m._forward_hooks for m in net.modules())


def test_forward_until_a_layer_that_never_runs_is_an_error() -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    net.add_module("unused", nn.ReLU())
    net.forward = lambda x: net[0](x)  # type: ignore[method-assign]
    with pytest.raises(ValueError, match=r"`layer`='unused' exists but did not run"):
        forward_until(net, "unused", torch.zeros(1, 2))
    assert all(not m._forward_hooks for m in net.modules())


class _InPlaceAfterNorm(nn.Module):
    """conv → bn → ReLU(inplace) → conv2 → bn2 → += identity → ReLU(inplace), as torchvision's BasicBlock."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.bn, self.bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn(self.conv(x)))))
        out += x
        return self.relu(out).mean(dim=(2, 3))


def test_capture_outputs_keeps_what_the_layer_returned_when_a_later_op_is_in_place() -> None:
    torch.manual_seed(0)
    net = _InPlaceAfterNorm().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected_bn, expected_logits = net.bn(net.conv(x)), net(x)
    with capture_outputs(net, ["bn", "bn2"]) as outputs, torch.no_grad():
        logits = net(x)
    assert (expected_bn < 0).any()  # the in-place ReLU would have overwritten these values
    torch.testing.assert_close(outputs["bn"], expected_bn, rtol=0, atol=0)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)  # the forward itself is unchanged


def test_gradients_with_respect_to_a_captured_output_are_those_of_the_layer_output() -> None:
    torch.manual_seed(0)
    net = _InPlaceAfterNorm().eval()
    twin = _InPlaceAfterNorm(inplace=False).eval()
    twin.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 6, 6)
    gradients = []
    for model in (net, twin):
        with capture_outputs(model, ["bn", "bn2"]) as outputs:
            score = model(x).sum()
            gradients.append(torch.autograd.grad(score, [outputs["bn"], outputs["bn2"]]))
    for in_place, plain in zip(*gradients, strict=True):
        torch.testing.assert_close(in_place, plain, rtol=0, atol=0)


def test_compiled_models_are_probed_through_the_original_module() -> None:
    net = VGG(num_classes=3, widths=(4,), convs_per_stage=1)
    compiled = torch.compile(net, backend="eager")
    assert unwrap_compiled(compiled) is net and unwrap_compiled(net) is net
    assert resolve_layer(compiled, "features.conv1") is net.features.conv1
    assert resolve_layer(compiled, "_orig_mod.features.conv1") is net.features.conv1
    outer = nn.Sequential(torch.compile(net, backend="eager"))  # a compiled submodule
    assert resolve_layer(outer, "0.features.conv1") is net.features.conv1
    assert resolve_layer(outer, "0._orig_mod.features.conv1") is net.features.conv1
    with pytest.raises(
        ValueError, match=r"`layer`='features.cnv1' is not a module of VGG; close matches: 'features.conv1'"
    ):
        resolve_layer(compiled, "features.cnv1")


class _CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given and runs them as captured."""

    def __init__(self) -> None:
        self.compilations = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> object:
        self.compilations += 1
        return graph.forward


class _Holder(nn.Module):
    """A user module around a network (``torch.compile`` skips ``torch.nn``'s own containers)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.mark.parametrize("where", ["in place", "submodule in place", "wrapped submodule", "forward"])
def test_uncompiled_runs_the_eager_forward_and_puts_the_compiled_one_back(where: str) -> None:
    torch._dynamo.reset()
    backend = _CountingBackend()
    net = VGG(num_classes=3, widths=(4,), convs_per_stage=1).eval()
    model: nn.Module = _Holder(net)
    if where == "in place":
        model.compile(backend=backend)
    elif where == "submodule in place":
        net.compile(backend=backend)
    elif where == "wrapped submodule":
        model.net = torch.compile(net, backend=backend)
    else:
        model.forward = torch.compile(model.forward, backend=backend)
    before = (dict(model.__dict__), dict(net.__dict__), dict(model._modules))
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)  # the compiled forward, compiled now
    assert backend.compilations == 1
    with capture_outputs(model, ["net.features.relu1"]) as outputs, uncompiled(model) as eager:
        with uncompiled(model):  # a nested block
            pass
        assert eager is model and eager(x).equal(expected) and "net.features.relu1" in outputs  # the hook ran
    # the functions the probes call a network through
    torch.testing.assert_close(eval_forward(model, x), expected, rtol=0, atol=0)
    assert forward_until(model, "net.features.relu1", x).shape == (2, 4, 8, 8)
    names = [name.replace("_orig_mod.", "") for name in modules_through(model, "net.features.bn1", x)]
    assert names == ["net.features.conv1", "net.features.bn1"]
    with pytest.raises(RuntimeError), probing(model):
        model(torch.randn(2, 5, 8, 8))  # wrong channel count: everything is put back on error too
    assert (dict(model.__dict__), dict(net.__dict__), dict(model._modules)) == before
    assert model(x).equal(expected) and backend.compilations == 1  # no probe call compiled nor recompiled
    torch._dynamo.reset()


def test_uncompiled_leaves_an_eager_model_as_it_is() -> None:
    net = VGG(num_classes=3, widths=(4,), convs_per_stage=1)
    compiled = torch.compile(net, backend="eager")
    before = {name: dict(module.__dict__) for name, module in net.named_modules()}
    with uncompiled(compiled) as eager, uncompiled(net):  # nested blocks are harmless
        assert eager is net
    assert {name: dict(module.__dict__) for name, module in net.named_modules()} == before
