"""Core probes under a caller's ``torch.autocast``: float32 results, equal to the same call outside autocast."""

import dataclasses
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from kd_probe.core.agreement import grad_cam, ifgsm, predictions
from kd_probe.core.layers import eval_forward, forward_until
from kd_probe.core.losses import feature_distillation_loss, logit_distillation_loss
from kd_probe.core.precision import autocast_off, computes_in_float32
from kd_probe.core.sigma import SigmaMaps, estimate_sigma_maps
from kd_probe.core.unicam import UniCAM, UniCAMResult, layer_features
from kd_probe.core.units import Tokens
from kd_probe.models import VGG, TokenTransformer

LAYER = "features.relu2"


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)


def _images(count: int = 4) -> Tensor:
    return torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _labels(count: int = 4) -> Tensor:
    return torch.arange(count) % 3


def _sigma_of_tokens() -> SigmaMaps:
    torch.manual_seed(0)
    net = TokenTransformer(vocab_size=20, num_classes=3, dim=8, depth=1, heads=2, max_length=8)
    tokens = torch.randint(1, 20, (2, 8), generator=torch.Generator().manual_seed(1))
    return estimate_sigma_maps(net, tokens, layer="blocks.0", units=Tokens("embedding"), samples=4, steps=3)


PROBES: dict[str, Callable[[], object]] = {
    "estimate_sigma_maps": lambda: estimate_sigma_maps(_net(), _images(2), layer=LAYER, grid=4, samples=4, steps=3),
    "estimate_sigma_maps secant": lambda: estimate_sigma_maps(
        _net(), _images(2), layer=LAYER, grid=4, samples=4, steps=3, method="secant"
    ),
    "estimate_sigma_maps tokens": _sigma_of_tokens,
    "grad_cam": lambda: grad_cam(_net(), _images(), _labels(), layer=LAYER),
    "ifgsm": lambda: ifgsm(_net(), _images(), _labels(), eps=0.1, steps=2),
    "predictions": lambda: predictions(_net(), _images()),
    "layer_features": lambda: layer_features(_net(), LAYER, _images()),
    "UniCAM": lambda: UniCAM(_net(0), _net(1), layer=LAYER)(_images(), _labels()),
    "forward_until": lambda: forward_until(_net().eval(), LAYER, _images()),
    "eval_forward": lambda: eval_forward(_net(), _images()),
}


def _tensors(result: object) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    if isinstance(result, SigmaMaps):
        return [getattr(result, f.name) for f in dataclasses.fields(result) if f.name != "method"]
    assert isinstance(result, UniCAMResult)
    return [result.maps, torch.tensor(result.score)]


def test_the_tiny_model_does_run_in_bfloat16_under_the_autocast() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _net()(_images()).dtype == torch.bfloat16  # so the table below tests something


@pytest.mark.parametrize("probe", PROBES.values(), ids=PROBES.keys())
def test_a_probe_under_bfloat16_autocast_returns_exactly_its_float32_result(probe: Callable[[], object]) -> None:
    expected = _tensors(probe())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = _tensors(probe())
        assert torch.is_autocast_enabled("cpu")  # the caller's autocast is back after the call
    for value, reference in zip(found, expected, strict=True):
        assert value.dtype in (torch.float32, torch.bool, torch.long)
        torch.testing.assert_close(value, reference, rtol=0, atol=0, equal_nan=True)  # dtypes equal too


def test_the_losses_follow_the_training_autocast() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 5, generator=generator), torch.randn(4, 5, generator=generator)
    features = torch.randn(4, 8, 3, 3, generator=generator), torch.randn(4, 8, 3, 3, generator=generator)
    logit, feature = logit_distillation_loss(student, teacher), feature_distillation_loss(*features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # CPU autocast runs log-softmax, KL and MSE in float32: float32 inputs give the float32 loss
        assert torch.equal(logit_distillation_loss(student, teacher), logit)
        assert torch.equal(feature_distillation_loss(*features), feature)
        # bfloat16 logits of an autocast forward are taken as they are: bfloat16 log-softmax (CPU autocast keeps
        # its input's type), float32 KL, so a float32 loss near the float32 one, not equal to it
        low = logit_distillation_loss(student.bfloat16(), teacher.bfloat16())
        assert low.dtype == torch.float32
        torch.testing.assert_close(low, logit, rtol=0.1, atol=0)
        assert feature_distillation_loss(*(f.bfloat16() for f in features)).dtype == torch.float32


def test_autocast_off_turns_off_only_what_is_on_and_restores_it() -> None:
    assert not torch.is_autocast_enabled("cpu")
    with autocast_off():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with autocast_off():
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_computes_in_float32_keeps_the_name_and_docstring() -> None:
    assert estimate_sigma_maps.__name__ == "estimate_sigma_maps"
    assert "Computes in float32 with autocast off" in (estimate_sigma_maps.__doc__ or "")
    assert computes_in_float32(len)([1, 2]) == 2
