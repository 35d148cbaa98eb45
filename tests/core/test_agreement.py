import copy
import math

import pytest
import torch
from torch import nn

from kd_probe.core.agreement import (
    adversarial_transfer,
    cam_cosine,
    cam_energy_in_mask,
    cam_win_rate,
    grad_cam,
    ifgsm,
    prediction_agreement,
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


def test_clear_errors() -> None:
    with pytest.raises(
        ValueError, match=r"the labels must be a tensor of shape \(2,\), one class per image, got \(3,\)"
    ):
        grad_cam(_vgg(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1, 2]), layer="features.relu1")
    with pytest.raises(ValueError, match=r"`layer`='features.relu9' is not a module of VGG"):
        grad_cam(_vgg(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), layer="features.relu9")
    with pytest.raises(ValueError, match=r"`steps` must be an integer ≥ 1, got 0"):
        ifgsm(_vgg(), torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), eps=0.1, steps=0)
