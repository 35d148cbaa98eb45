import copy
import math
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from kd_probe.core.agreement import (
    adversarial_transfer,
    cam_cosine,
    cam_energy_in_mask,
    cam_win_rate,
    cam_wins,
    fooled,
    grad_cam,
    ifgsm,
    prediction_agreement,
    prediction_unchanged,
    predictions,
)
from kd_probe.core.transforms import TRANSFORMS, color_jitter, shift
from kd_probe.models import VGG


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_grad_cam_equals_the_hand_computation() -> None:
    net, x = _Tiny(), torch.randn(2, 1, 5, 5)
    targets = torch.tensor([0, 2])
    activation = net.relu(net.conv(x)).detach()
    alpha = net.fc.weight[targets].detach() / 25  # ∂y_c/∂A_k = W[c, k] / (H·W) everywhere
    expected = torch.relu((alpha[:, :, None, None] * activation).sum(dim=1))
    torch.testing.assert_close(grad_cam(net, x, targets, layer="relu"), expected)


def _vgg() -> VGG:
    torch.manual_seed(0)
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)


def test_a_copy_of_the_teacher_agrees_perfectly() -> None:
    teacher, x, y = _vgg(), torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    student = copy.deepcopy(teacher)
    cosine = cam_cosine(
        grad_cam(teacher, x, y, layer="features.relu2"), grad_cam(student, x, y, layer="features.relu2")
    )
    cams = grad_cam(teacher, x, y, layer="features.relu2")
    assert torch.allclose(cosine[cams.flatten(1).sum(1) > 0], torch.ones(1))
    adversarial = ifgsm(teacher, x, predictions(teacher, x), eps=0.5, steps=5)
    transfer, rate = adversarial_transfer(
        predictions(teacher, x),
        predictions(teacher, adversarial),
        predictions(student, x),
        predictions(student, adversarial),
    )
    assert rate > 0 and transfer == 1.0


def test_ifgsm_stays_in_the_ball_and_the_range() -> None:
    net, x = _vgg(), torch.rand(4, 3, 16, 16)
    eps = 0.03
    adversarial = ifgsm(net, x, torch.tensor([0, 1, 2, 0]), eps=eps, steps=7, clamp=(0.0, 1.0))
    assert (adversarial - x).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    per_channel = ifgsm(net, x, torch.tensor([0, 1, 2, 0]), eps=torch.tensor([0.0, 0.01, 0.02]).view(1, 3, 1, 1))
    assert (per_channel - x)[:, 0].abs().max() == 0 and (per_channel - x)[:, 2].abs().max() <= 0.02 + 1e-6


class _BrightestQuadrant(nn.Module):
    """Predicts the quadrant with the highest mean grey level: invariant to brightness, contrast and
    saturation changes (they keep the ordering of grey means) by construction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1)
        h, w = grey.shape[-2] // 2, grey.shape[-1] // 2
        quadrants = [grey[:, :h, :w], grey[:, :h, w:], grey[:, h:, :w], grey[:, h:, w:]]
        return torch.stack([q.mean(dim=(1, 2)) for q in quadrants], dim=1)


def test_a_colour_invariant_model_has_invariance_agreement_one() -> None:
    x = 0.3 + 0.2 * torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    jittered = color_jitter(x, torch.Generator().manual_seed(1))
    assert not torch.allclose(jittered, x)
    model = _BrightestQuadrant()
    assert prediction_agreement(predictions(model, x), predictions(model, jittered)) == 1.0


def test_transforms_are_seeded_and_keep_shapes() -> None:
    x = torch.randn(4, 3, 16, 16)
    for name, transform in TRANSFORMS.items():
        a, b = transform(x, torch.Generator().manual_seed(3)), transform(x, torch.Generator().manual_seed(3))
        assert torch.equal(a, b) and a.shape == x.shape, name
    torch.testing.assert_close(shift(x, torch.Generator().manual_seed(0), max_shift=0.0), x)


def test_no_side_effects_on_the_models() -> None:
    net = _vgg().train()
    net.features.bn1.eval()
    net.head.fc.weight.grad = torch.ones_like(net.head.fc.weight)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    grad_cam(net, x, y, layer="features.relu2")
    ifgsm(net, x, y, eps=0.1)
    predictions(net, x)
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert torch.equal(net.head.fc.weight.grad, torch.ones_like(net.head.fc.weight))
    assert all(p.grad is None for name, p in net.named_parameters() if name != "head.fc.weight")
    assert all(not m._forward_hooks for m in net.modules())


def test_scores_known_answers() -> None:
    transfer, rate = adversarial_transfer(
        torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 0, 0]), torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 1, 3])
    )
    assert rate == 0.75 and transfer == pytest.approx(1 / 3)  # teacher fooled on 0, 2, 3; student on 2 of those
    assert math.isnan(adversarial_transfer(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.ones(2))[0])
    cams = torch.zeros(2, 2, 2)
    cams[0, 0, 0], cams[0, 1, 1], cams[1, 0, 0] = 3.0, 1.0, 2.0
    mask = torch.tensor([[[1, 0], [0, 0]]] * 2)
    assert cam_energy_in_mask(cams, mask).tolist() == [0.75, 1.0]
    assert cam_win_rate(torch.tensor([0.9, 0.5, 0.7]), torch.tensor([0.8, 0.6, 0.7])) == pytest.approx(1 / 3)
    assert cam_cosine(torch.ones(1, 2, 2), torch.zeros(1, 2, 2)).tolist() == [0.0]


def test_per_image_scores_are_what_the_scalars_average() -> None:
    teacher_fooled = fooled(torch.tensor([0, 1, 2, 3]), torch.tensor([1, 1, 0, 0]))
    student_fooled = fooled(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 1, 3]))
    assert teacher_fooled.tolist() == [True, False, True, True] and student_fooled.tolist() == [
        False,
        True,
        True,
        False,
    ]
    assert int((teacher_fooled & student_fooled).sum()) / int(teacher_fooled.sum()) == pytest.approx(1 / 3)
    wins = cam_wins(torch.tensor([0.9, 0.5, 0.7]), torch.tensor([0.8, 0.6, 0.7]))
    assert wins.tolist() == [True, False, False]  # a tie is no win
    unchanged = prediction_unchanged(torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2]))
    assert unchanged.tolist() == [True, False, True]
    assert prediction_agreement(torch.tensor([0, 1, 2]), torch.tensor([0, 2, 2])) == pytest.approx(2 / 3)


def test_clear_errors() -> None:
    with pytest.raises(
        ValueError, match=r"the labels must be a tensor of shape \(2,\), one class per image, got \(3,\)"
    ):
        grad_cam(_vgg(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1, 2]), layer="features.relu1")
    with pytest.raises(ValueError, match=r"`layer`='features.relu9' is not a module of VGG"):
        grad_cam(_vgg(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), layer="features.relu9")
    with pytest.raises(ValueError, match=r"`steps` must be an integer ≥ 1, got 0"):
        ifgsm(_vgg(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), eps=0.1, steps=0)


# ---- non-finite input never gives a plausible number; chunking (issue 13) ----


class _Shifted(nn.Module):
    """``_Tiny`` with a constant added to the logits: infinite logits whose gradients stay finite."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.tiny, self.shift = _Tiny(), shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tiny(x) + self.shift


class _RootOfMagnitude(nn.Module):
    """Logits from ``sqrt(|x|)``: finite everywhere, but the gradient at a pixel equal to 0 is NaN."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(25, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.abs().sqrt().flatten(1))


def test_predictions_refuse_non_finite_logits() -> None:
    images = torch.randn(5, 1, 5, 5)
    images[1, 0, 2, 2], images[3, 0, 0, 0] = math.nan, math.inf
    with pytest.raises(FloatingPointError, match=r"`model` gave NaN or infinite logits for 2 of 5 images; their top-1"):
        predictions(_Tiny(), images, batch_size=2)  # before: argmax of NaN, a plausible class


def test_grad_cam_gives_nan_maps_for_non_finite_logits_activations_or_gradients() -> None:
    net, x, targets = _Tiny(), torch.randn(3, 1, 5, 5), torch.tensor([0, 2, 1])
    clean = grad_cam(net, x, targets, layer="relu")
    poisoned = x.clone()
    poisoned[1, 0, 0, 0] = math.nan  # reaches a 2×2 corner of the activations only
    cams = grad_cam(net, poisoned, targets, layer="relu")
    assert torch.isnan(cams[1]).all()  # before: NaN in a corner, a plausible map elsewhere
    torch.testing.assert_close(cams[[0, 2]], clean[[0, 2]])
    infinite = grad_cam(_Shifted(math.inf), x, targets, layer="tiny.relu")  # the gradients are those of _Tiny
    assert torch.isnan(infinite).all()  # before: equal to `clean`
    zero_pixel = torch.rand(2, 1, 5, 5) + 0.5
    zero_pixel[0, 0, 1, 1] = 0.0
    with_nan_gradient = nn.Sequential(nn.Identity(), _RootOfMagnitude())
    cams = grad_cam(with_nan_gradient, zero_pixel, torch.tensor([0, 1]), layer="0")
    assert torch.isnan(cams[0]).all() and torch.isfinite(cams[1]).all()


def test_ifgsm_refuses_non_finite_logits_or_gradients() -> None:
    images, labels = torch.rand(4, 1, 5, 5) + 0.5, torch.tensor([0, 1, 2, 0])
    broken = images.clone()
    broken[2, 0, 3, 3] = math.nan
    with pytest.raises(
        FloatingPointError,
        match=r"`model` gave NaN or infinite logits at I-FGSM step 1 for 1 image\(s\) \(indices \[2\]\)",
    ):
        ifgsm(_Tiny(), broken, labels, eps=0.1, max_batch=3)
    zero_pixel = images.clone()
    zero_pixel[3, 0, 1, 1] = 0.0  # sqrt(|x|) has a NaN gradient there; before: NaN adversarial images
    with pytest.raises(FloatingPointError, match=r"the I-FGSM gradient at step 1 is NaN or infinite for 1 image\(s\)"):
        ifgsm(_RootOfMagnitude(), zero_pixel, labels, eps=0.1)


def test_cam_scores_are_nan_for_non_finite_maps() -> None:
    cams, others = torch.rand(3, 4, 4) + 0.1, torch.rand(3, 4, 4) + 0.1
    cams[1, 0, 0] = math.nan  # before: cosine 0.0
    cams[2, 3, 3] = math.inf  # outside the mask; before: energy in mask 0.0
    mask = torch.zeros(3, 4, 4)
    mask[:, :2, :2] = 1
    cosine, energy = cam_cosine(cams, others), cam_energy_in_mask(cams, mask)
    assert math.isfinite(cosine[0]) and math.isfinite(energy[0])
    assert torch.isnan(cosine[1:]).all() and torch.isnan(energy[1:]).all()
    assert math.isnan(cam_cosine(others, cams)[2])


def test_chunked_equals_unchunked_and_the_model_is_untouched() -> None:
    net = _vgg().train()
    net.get_submodule("features.bn1").eval()
    weight = net.get_parameter("head.fc.weight")
    weight.grad = torch.ones_like(weight)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    x, y = torch.randn(7, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    cams, adversarial = grad_cam(net, x, y, layer="features.relu2"), ifgsm(net, x, y, eps=0.1, clamp=(-1.0, 1.0))
    for max_batch in (1, 3, 5):  # 3 and 5 do not divide 7
        torch.testing.assert_close(
            grad_cam(net, x, y, layer="features.relu2", max_batch=max_batch), cams, atol=1e-6, rtol=0
        )
        chunked = ifgsm(net, x, y, eps=0.1, clamp=(-1.0, 1.0), max_batch=max_batch)
        torch.testing.assert_close(chunked, adversarial, atol=1e-6, rtol=0)
        assert torch.equal(predictions(net, x, max_batch=max_batch), predictions(net, x))
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert weight.grad is not None and torch.equal(weight.grad, torch.ones_like(weight))
    assert all(p.grad is None for name, p in net.named_parameters() if name != "head.fc.weight")
    assert all(not m._forward_hooks for m in net.modules())


@pytest.mark.parametrize("max_batch", [0, -2, 2.5, True, "4"])
def test_max_batch_must_be_a_positive_integer(max_batch: object) -> None:
    net, x, y = _vgg(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    message = rf"`max_batch` must be an integer ≥ 1 \(images per forward\), got {re.escape(repr(max_batch))}\."
    with pytest.raises(ValueError, match=message):
        grad_cam(net, x, y, layer="features.relu1", max_batch=max_batch)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        ifgsm(net, x, y, eps=0.1, max_batch=max_batch)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        predictions(net, x, max_batch=max_batch)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`batch_size` must be an integer ≥ 1 \(images per forward\), got 0\."):
        predictions(net, x, batch_size=0)


class _Tokens(nn.Module):
    """Feature maps ``[N, C, h, w]`` → tokens ``[N, 1 + h·w, C]`` (a class token first), as a ViT's embedding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, channels))

    def forward(self, maps: Tensor) -> Tensor:
        return torch.cat([self.cls.expand(len(maps), -1, -1), maps.flatten(2).transpose(1, 2)], dim=1)


class _TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.tokens = _Tokens(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = torch.tanh(self.tokens(self.conv(x)))
        return self.head(tokens[:, 0] + tokens[:, 1:].mean(dim=1))


def test_grad_cam_on_tokens_equals_grad_cam_on_the_feature_map_they_lay_out() -> None:
    torch.manual_seed(0)
    net, images, targets = _TokenNet(), torch.randn(4, 3, 8, 12), torch.tensor([0, 1, 2, 0])
    expected = grad_cam(net, images, targets, layer="conv")
    torch.testing.assert_close(grad_cam(net, images, targets, layer="tokens"), expected, rtol=0, atol=0)
    torch.testing.assert_close(
        grad_cam(net, images, targets, layer="tokens", prefix_tokens=1), expected, rtol=0, atol=0
    )
    with pytest.raises(ValueError, match=r"`layer`='tokens' outputs 25 tokens, which after dropping `prefix_tokens`=2"):
        grad_cam(net, images, targets, layer="tokens", prefix_tokens=2)


def test_compiled_models_give_the_eager_values_without_recompiling() -> None:
    compilations = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list[Tensor]) -> Any:
        compilations.append(graph)
        return graph.forward

    torch.manual_seed(0)
    net = VGG(num_classes=3, widths=(4, 8))
    compiled = torch.compile(net, backend=counting_backend)
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    compiled(images).sum().backward()  # the training graph
    assert len(compilations) == 1
    for layer in ("features.relu2", "_orig_mod.features.relu2"):
        cams = grad_cam(compiled, images, labels, layer=layer)
        torch.testing.assert_close(cams, grad_cam(net, images, labels, layer="features.relu2"), rtol=0, atol=0)
    torch.testing.assert_close(ifgsm(compiled, images, labels, eps=0.1), ifgsm(net, images, labels, eps=0.1))
    assert torch.equal(predictions(compiled, images), predictions(net, images))
    compiled(images).sum().backward()
    assert len(compilations) == 1  # no probe call traced, guarded or recompiled the training graph
