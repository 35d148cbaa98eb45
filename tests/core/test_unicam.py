import copy
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_probe.core.distance_correlation import relevance_given, residual_matrix
from kd_probe.core.unicam import UniCAM, feature_vectors, layer_features, max_row_score, pooled_features
from kd_probe.models import VGG


def _identity_net() -> nn.Module:
    """Features = ReLU(input): the map should light up where the label signal is."""
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    return nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU()))


def _left_half_data(n: int = 24):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 3
    images = 0.1 * torch.rand(n, 2, 8, 8, generator=generator)
    images[:, 0, :, :4] += (labels + 1).float().view(-1, 1, 1)  # the label lives in the left half only
    return images, labels


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    student, teacher = VGG(3, widths=(4, 8), convs_per_stage=1), VGG(3, widths=(8, 8), convs_per_stage=1)
    for net in (student, teacher):  # non-trivial BatchNorm statistics, so eval mode matters
        net.train()
        with torch.no_grad():
            net(torch.randn(32, 3, 12, 12) * 2 + 1)
    return student, teacher


@pytest.mark.parametrize("objective", ["relevance", "max_row"])
def test_maps_light_up_where_the_label_information_is(objective):
    images, labels = _left_half_data()
    torch.manual_seed(1)
    other = nn.Sequential(OrderedDict(conv=nn.Conv2d(2, 4, 3), relu=nn.ReLU()))
    result = UniCAM(_identity_net(), other, layer="relu", objective=objective)(images, labels)
    left, right = result.maps[:, :, :4].mean(), result.maps[:, :, 4:].mean()
    assert left > 4 * right
    assert result.maps.shape == (24, 8, 8) and result.maps.min() >= 0 and result.maps.max() <= 1


def _by_hand(student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor) -> dict:
    """By hand: full forwards of copies in eval mode, hooks, the student's graph kept for autograd: the CAM
    layer's activations ``a``, the student's features ``f`` and the teacher's ``t``."""
    student_copy, teacher_copy = copy.deepcopy(student).eval(), copy.deepcopy(teacher).eval()
    store = {}
    student_copy.features.conv2.register_forward_hook(lambda _m, _i, out: store.update(a=out))
    student_copy.features.relu2.register_forward_hook(lambda _m, _i, out: store.update(f=out))
    teacher_copy.features.relu2.register_forward_hook(lambda _m, _i, out: store.update(t=out))
    student_copy(images)
    with torch.no_grad():
        teacher_copy(images)
    return store


def test_maps_and_score_equal_the_hand_computation():
    student, teacher = _pair()
    images, labels = torch.randn(8, 3, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    result = UniCAM(student, teacher, layer="features.conv2", feature_layer_x="features.relu2")(images, labels)

    store = _by_hand(student, teacher, images)
    score = relevance_given(store["f"].mean(dim=(2, 3)), store["t"].mean(dim=(2, 3)), labels)
    (gradient,) = torch.autograd.grad(score, store["a"])
    cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(dim=1))
    low, high = cam.flatten(1).min(1).values, cam.flatten(1).max(1).values
    cam = (cam - low[:, None, None]) / (high - low).clamp(min=1e-12)[:, None, None]  # an empty map stays 0
    expected = F.interpolate(cam[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    assert result.score == pytest.approx(float(score.detach()), abs=1e-6)
    torch.testing.assert_close(result.maps, expected.detach(), atol=1e-5, rtol=1e-4)


def test_flattened_features_equal_the_hand_computation():
    student, teacher = _pair()
    images, labels = torch.randn(8, 3, 12, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    options = dict(layer="features.conv2", feature_layer_x="features.relu2", features="flattened")
    result = UniCAM(student, teacher, **options)(images, labels)

    store = _by_hand(student, teacher, images)
    assert store["f"].dim() == 4 and store["f"].shape[2:] != (1, 1)  # a real map, not a pooled vector
    score = relevance_given(store["f"].reshape(8, -1), store["t"].reshape(8, -1), labels)
    (gradient,) = torch.autograd.grad(score, store["a"])
    cam = F.relu((gradient.mean(dim=(2, 3), keepdim=True) * store["a"]).sum(dim=1))
    low, high = cam.flatten(1).min(1).values, cam.flatten(1).max(1).values
    cam = (cam - low[:, None, None]) / (high - low).clamp(min=1e-12)[:, None, None]
    expected = F.interpolate(cam[:, None], size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    assert result.score == pytest.approx(float(score.detach()), abs=1e-6)
    torch.testing.assert_close(result.maps, expected.detach(), atol=1e-5, rtol=1e-4)
    pooled = UniCAM(student, teacher, **{**options, "features": "pooled"})(images, labels)
    assert pooled.score != pytest.approx(result.score, abs=1e-3)  # the choice matters
    flat = layer_features(teacher, "features.relu2", images, features="flattened")
    torch.testing.assert_close(flat, store["t"].flatten(1), rtol=0, atol=0)


def test_pooled_features_are_unchanged_and_other_outputs_flattened_either_way():
    maps, vectors, tokens = torch.randn(5, 4, 3, 2), torch.randn(5, 7), torch.randn(5, 6, 3)
    assert torch.equal(feature_vectors(maps), maps.mean(dim=(2, 3)))
    assert torch.equal(feature_vectors(maps, "pooled"), pooled_features(maps))
    assert torch.equal(feature_vectors(maps, "flattened"), maps.reshape(5, 24))
    for features in ("pooled", "flattened"):
        assert torch.equal(feature_vectors(vectors, features), vectors)
        assert torch.equal(feature_vectors(tokens, features), tokens.reshape(5, 18))
    student, _ = _pair()
    images = torch.randn(6, 3, 12, 12)
    store = {}
    reference = copy.deepcopy(student).eval()
    reference.features.relu2.register_forward_hook(lambda _m, _i, out: store.update(f=out))
    with torch.no_grad():
        reference(images)
    torch.testing.assert_close(layer_features(student, "features.relu2", images), store["f"].mean(dim=(2, 3)))
    with pytest.raises(ValueError, match=r"`features` must be 'pooled' \(.*\) or 'flattened' \(.*\), got 'flat'\."):
        UniCAM(student, student, layer="features.relu2", features="flat")
    with pytest.raises(ValueError, match=r"`features` must be 'pooled' .*got 'mean'\."):
        layer_features(student, "features.relu2", images, features="mean")
    with pytest.raises(ValueError, match=r"`features` must be 'pooled' .*got None\."):
        feature_vectors(maps, None)  # type: ignore[arg-type]


def test_max_row_score_is_the_sum_of_row_maxima_of_the_residual():
    x, y = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 2, dtype=torch.float64)
    p = residual_matrix(x, y)
    assert float(max_row_score(x, y)) == pytest.approx(sum(float(row.max()) for row in p), abs=1e-12)
    student, teacher = _pair()
    images = torch.randn(6, 3, 12, 12)
    result = UniCAM(student, teacher, layer="features.relu2", objective="max_row")(images, torch.zeros(6).long())
    fx = layer_features(student, "features.relu2", images)
    fy = layer_features(teacher, "features.relu2", images)
    assert result.score == pytest.approx(float(max_row_score(fx, fy)), rel=1e-5)


def test_a_model_given_itself_holds_nothing():
    student, _ = _pair()
    result = UniCAM(student, student, layer="features.relu2")(torch.randn(8, 3, 12, 12), torch.arange(8) % 2)
    assert result.score == pytest.approx(0.0, abs=1e-9)
    assert torch.all(result.maps == 0)


def test_frozen_models_no_side_effects_and_cached_features():
    student, teacher = _pair()
    student.train()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    images, labels = torch.randn(8, 3, 12, 12), torch.arange(8) % 3
    buffers = {k: v.clone() for k, v in student.state_dict().items()}
    unicam = UniCAM(student, teacher, layer="features.relu2")
    first = unicam(images, labels)
    for p in student.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # a caller without grad still gets maps
        frozen = unicam(images, labels)
    torch.testing.assert_close(first.maps, frozen.maps)
    cached = unicam(images, labels, features_y=unicam.features_y(images))
    torch.testing.assert_close(first.maps, cached.maps)
    one_hot = unicam(images, torch.eye(3)[labels])
    torch.testing.assert_close(first.maps, one_hot.maps)
    assert student.training and not teacher.training
    assert all(p.grad is None for p in [*student.parameters(), *teacher.parameters()])
    assert all(torch.equal(v, buffers[k]) for k, v in student.state_dict().items())
    assert not student.features.relu2._forward_hooks and not teacher.features.relu2._forward_hooks


def test_residual_maps_swap_the_models():
    student, teacher = _pair()
    images, labels = torch.randn(8, 3, 12, 12), torch.arange(8) % 3
    distilled = UniCAM(student, teacher, layer="features.relu2")(images, labels)
    residual = UniCAM(teacher, student, layer="features.relu2")(images, labels)
    fs, ft = layer_features(student, "features.relu2", images), layer_features(teacher, "features.relu2", images)
    assert distilled.score == pytest.approx(float(relevance_given(fs, ft, labels)), abs=1e-6)
    assert residual.score == pytest.approx(float(relevance_given(ft, fs, labels)), abs=1e-6)


def test_clear_errors():
    student, teacher = _pair()
    with pytest.raises(ValueError, match=r"`objective` must be one of \('relevance', 'max_row'\), got 'max'"):
        UniCAM(student, teacher, layer="features.relu2", objective="max")
    with pytest.raises(ValueError, match=r"`layer`='features.relu9' is not a module of VGG; close matches: .*relu"):
        UniCAM(student, teacher, layer="features.relu9")
    with pytest.raises(ValueError, match=r"`feature_layer_y`='features.relu3' is not a module of VGG"):
        UniCAM(student, teacher, layer="features.relu2", feature_layer_x="head.pool", feature_layer_y="features.relu3")
    unicam = UniCAM(student, teacher, layer="features.relu2")
    with pytest.raises(ValueError, match=r"`images` holds 3 images; .* needs N ≥ 4 \(n = 1 is undefined\)"):
        unicam(torch.randn(3, 3, 12, 12), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"`targets` must hold one label .* 5 rows, got shape \(4,\)"):
        unicam(torch.randn(5, 3, 12, 12), torch.tensor([0, 1, 2, 0]))
    early = UniCAM(student, teacher, layer="features.relu2", feature_layer_x="features.relu1")
    with pytest.raises(ValueError, match=r"`layer`='features.relu2' does not run before `feature_layer_x`"):
        early(torch.randn(5, 3, 12, 12), torch.arange(5) % 2)
    flat = UniCAM(student, teacher, layer="head.flatten", feature_layer_x="head.fc", feature_layer_y="head.fc")
    with pytest.raises(
        ValueError, match=r"`layer`='head.flatten' outputs shape \(5, 8\); a class-activation map needs a feature map"
    ):
        flat(torch.randn(5, 3, 12, 12), torch.arange(5) % 2)


# ---- degenerate and non-finite scores, chunking (issue 13) ----


class _Affine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7 * x + 0.3


def _with_affine_copy():
    """Y's features are an affine copy of X's: what X holds beyond Y is float64 rounding noise (in float32 the
    copy's own rounding, 1e-7 of the features, would be a real if tiny difference)."""
    torch.manual_seed(2)
    x_net = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), relu=nn.ReLU())).double()
    y_net = nn.Sequential(OrderedDict(conv=copy.deepcopy(x_net.conv), relu=nn.ReLU(), affine=_Affine()))
    return x_net, y_net


@pytest.mark.parametrize("objective", ["relevance", "max_row"])
def test_a_score_that_is_zero_up_to_rounding_gives_zero_and_empty_maps(objective):
    x_net, y_net = _with_affine_copy()
    images, labels = torch.randn(8, 3, 6, 6, dtype=torch.float64), torch.arange(8) % 3
    unicam = UniCAM(x_net, y_net, layer="relu", feature_layer_y="affine", objective=objective)
    result = unicam(images, labels)
    assert result.score == 0.0 and torch.all(result.maps == 0)  # before: rounding noise scaled into a map
    fx, fy = layer_features(x_net, "relu", images), layer_features(y_net, "affine", images)
    assert float(max_row_score(fx, fy)) == 0.0  # before: a sum of rounding noise
    student, teacher = _pair()
    alone = torch.tensor([0, 0, 0, 1, 0, 0])  # one image alone in its class, the others in one class
    result = UniCAM(student, teacher, layer="features.relu2")(torch.randn(6, 3, 12, 12), alone)
    assert result.score == 0.0 and torch.all(result.maps == 0)
    dead = UniCAM(student, teacher, layer="features.relu2", objective=objective)  # all features equal
    result = dead(torch.zeros(6, 3, 12, 12), torch.arange(6) % 2)  # before: RuntimeError from autograd
    assert result.score == 0.0 and torch.all(result.maps == 0)


@pytest.mark.parametrize("objective", ["relevance", "max_row"])
def test_non_finite_features_give_a_nan_score_and_nan_maps(objective):
    student, teacher = _pair()
    images = torch.randn(6, 3, 12, 12)
    images[4, 1, 5, 5] = math.nan
    result = UniCAM(student, teacher, layer="features.relu2", objective=objective)(images, torch.arange(6) % 3)
    assert math.isnan(result.score) and torch.isnan(result.maps).all()  # before: FloatingPointError
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    y[0, 0] = math.inf
    assert math.isnan(float(max_row_score(x, y))) and math.isnan(float(max_row_score(y, x)))


@pytest.mark.parametrize("objective", ["relevance", "max_row"])
def test_chunked_equals_unchunked_and_the_models_are_untouched(objective):
    student, teacher = (net.double() for net in _pair())  # float64: chunking changes nothing but rounding
    student.train()
    student.features.bn1.eval()
    student.head.fc.weight.grad = torch.ones_like(student.head.fc.weight)
    buffers = {k: v.clone() for k, v in student.state_dict().items()}
    modes = [m.training for m in [*student.modules(), *teacher.modules()]]
    images, labels = torch.randn(7, 3, 12, 12, dtype=torch.float64), torch.arange(7) % 3
    unicam = UniCAM(student, teacher, layer="features.conv2", feature_layer_x="features.relu2", objective=objective)
    whole = unicam(images, labels)
    assert whole.maps.max() > 0
    for max_batch in (1, 3, 5, 7, 100):  # 3 and 5 do not divide 7
        chunked = unicam(images, labels, max_batch=max_batch)
        torch.testing.assert_close(chunked.maps, whole.maps, atol=1e-6, rtol=0)
        assert chunked.score == pytest.approx(whole.score, abs=1e-6)
    torch.testing.assert_close(unicam.features_y(images, max_batch=2), unicam.features_y(images))
    assert [m.training for m in [*student.modules(), *teacher.modules()]] == modes
    assert all(torch.equal(v, buffers[k]) for k, v in student.state_dict().items())
    assert torch.equal(student.head.fc.weight.grad, torch.ones_like(student.head.fc.weight))
    assert all(p.grad is None for n, p in student.named_parameters() if n != "head.fc.weight")
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not m._forward_hooks for m in [*student.modules(), *teacher.modules()])


def test_max_batch_must_be_a_positive_integer():
    student, teacher = _pair()
    unicam = UniCAM(student, teacher, layer="features.relu2")
    with pytest.raises(ValueError, match=r"`max_batch` must be an integer ≥ 1 \(images per forward\), got 0\."):
        unicam(torch.randn(5, 3, 12, 12), torch.arange(5) % 2, max_batch=0)


def test_maps_at_a_token_layer_equal_the_maps_at_the_feature_map_it_lays_out() -> None:
    from tests.core.test_agreement import _TokenNet

    torch.manual_seed(0)
    net, other = _TokenNet(), _TokenNet()
    images, labels = torch.randn(6, 3, 8, 12), torch.tensor([0, 1, 2, 0, 1, 2])
    on_maps = UniCAM(net, other, layer="conv", feature_layer_x="head")(images, labels)
    on_tokens = UniCAM(net, other, layer="tokens", feature_layer_x="head", prefix_tokens=1)(images, labels)
    torch.testing.assert_close(on_tokens.maps, on_maps.maps, rtol=0, atol=0)
    assert on_tokens.score == on_maps.score
