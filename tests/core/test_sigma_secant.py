"""The secant σ engine (spec §1.8) and the early stop of the §1.2 recurrence."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_probe import ShapesDataModule, count_knowledge_points, estimate_sigma_maps
from kd_probe.core.sigma import SigmaMaps
from kd_probe.models import VGG, ResNet
from tests.core.test_sigma import (
    _assert_same,
    _boost_reference,
    _Gated,
    _images,
    _messy_net,
    _net,
    _snapshot,
)

SECANT = dict(method="secant", grid=8, samples=16, passes=2)


def test_a_hidden_region_has_no_knowledge_point_and_one_free_sigma() -> None:
    visible = torch.zeros(16, 16)
    visible[:, :8] = 1
    maps = estimate_sigma_maps(_Gated(visible), _images(), layer="body.2", **SECANT)
    hidden_units, visible_units = maps.entropy[:, :, 4:], maps.entropy[:, :, :4]
    assert maps.method == "secant"
    assert (hidden_units.flatten(1).min(1).values >= visible_units.flatten(1).max(1).values).all()
    assert torch.equal(hidden_units, hidden_units[:, :1, :1].expand_as(hidden_units))
    points = count_knowledge_points(maps.entropy, visible.expand(3, 16, 16))
    assert points.n_bg.tolist() == [0, 0, 0] and (points.n_fg > 0).all()


def test_an_amplified_unit_has_the_lowest_entropy() -> None:
    gain = torch.ones(16, 16)
    gain[4:6, 10:12] = 10.0  # unit (2, 5) of the 8×8 grid
    maps = estimate_sigma_maps(_Gated(gain), _images(), layer="body.2", **SECANT)
    assert maps.entropy.flatten(1).argmin(1).tolist() == [2 * 8 + 5] * 3


def test_batched_equals_per_image_in_any_order_sharding_and_chunking() -> None:
    net, images = _net(), _images(4)
    batched = estimate_sigma_maps(net, images, layer="features.relu2", **SECANT)
    singles = SigmaMaps.cat(
        [estimate_sigma_maps(net, images[i : i + 1], layer="features.relu2", indices=[i], **SECANT) for i in range(4)]
    )
    order = [2, 0, 3, 1]
    shuffled = estimate_sigma_maps(net, images[order], layer="features.relu2", indices=order, **SECANT)
    shards = SigmaMaps.cat(
        [
            estimate_sigma_maps(net, images[s], layer="features.relu2", indices=list(range(4))[s], **SECANT)
            for s in (slice(0, 1), slice(1, 4))
        ]
    )
    chunked = estimate_sigma_maps(net, images, layer="features.relu2", max_batch=5, **SECANT)
    for other, permutation in ((singles, range(4)), (shards, range(4)), (shuffled, order), (chunked, range(4))):
        torch.testing.assert_close(other.sigma, batched.sigma[list(permutation)], atol=1e-6, rtol=0)
        assert torch.equal(other.step, batched.step[list(permutation)]) and other.method == "secant"


def test_dead_features_give_the_faithful_entropy_only_trajectory() -> None:
    dead = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU())
    nn.init.zeros_(dead[0].weight)
    nn.init.constant_(dead[0].bias, -1.0)  # σ_f = 0 whatever the input
    maps = estimate_sigma_maps(dead, _images(2), layer="1", method="secant", grid=4, samples=4, steps=30, lam=0.3)
    step, boosted, sigma = _boost_reference(30, 0.3, -2.8, 4)
    assert maps.effective.tolist() == [False, False] and maps.step.tolist() == [step, step]
    assert maps.boosted.tolist() == [boosted, boosted]
    torch.testing.assert_close(maps.sigma, torch.full((2, 4, 4), sigma), atol=1e-6, rtol=0)


def test_no_side_effects_on_the_model_or_the_global_rng() -> None:
    net = _messy_net()
    before = _snapshot(net)
    estimate_sigma_maps(net, _images(2), layer="features.relu2", **SECANT)
    _assert_same(before, _snapshot(net))


def test_progress_counts_passes() -> None:
    seen: list[tuple[int, int]] = []
    options = {**SECANT, "passes": 3, "progress": lambda done, total: seen.append((done, total))}
    estimate_sigma_maps(_net(), _images(1), layer="features.relu1", **options)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def _trained_cnn(count: int = 4) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small VGG trained for a few seconds on the built-in 32 px shapes, and ``count`` held-out images with
    masks (probed at ``features.bn3`` on a 16 × 16 grid, it has knowledge points on every image)."""
    data = ShapesDataModule(num_classes=3, image_size=32, train_size=384, val_size=8, test_size=8, probe_size=count)
    data.setup("fit")
    torch.manual_seed(0)
    net = VGG(num_classes=3, widths=(8, 16, 32), convs_per_stage=1)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(data.train_set, batch_size=32, shuffle=True)
    for _ in range(2):
        for batch in loader:
            optimiser.zero_grad()
            F.cross_entropy(net(batch[0]), batch[1]).backward()
            optimiser.step()
    items = [data.probe_set[i] for i in range(count)]
    return net.eval(), torch.stack([i[0] for i in items]), torch.stack([torch.as_tensor(i[2]) for i in items])


def _iou(a: SigmaMaps, b: SigmaMaps, masks: torch.Tensor) -> float:
    first, second = count_knowledge_points(a.entropy, masks).points, count_knowledge_points(b.entropy, masks).points
    return float((first & second).sum() / (first | second).sum().clamp(min=1))


@pytest.mark.slow
def test_secant_maps_agree_with_faithful_maps_on_a_trained_cnn() -> None:
    net, images, masks = _trained_cnn()
    options = dict(layer="features.bn3", grid=16)
    faithful = estimate_sigma_maps(net, images, patience=1, **options)  # the full run's maps, sooner
    again = estimate_sigma_maps(net, images, seed=1, patience=1, **options)
    secant = estimate_sigma_maps(net, images, method="secant", **options)
    assert count_knowledge_points(faithful.entropy, masks).points.sum() >= 10  # the IoU has points to compare
    floor = _iou(faithful, again, masks)  # two faithful runs with different noise (about 0.8 here)
    assert _iou(faithful, secant, masks) >= floor - 0.05
    assert torch.corrcoef(torch.stack([faithful.entropy.flatten(), secant.entropy.flatten()]))[0, 1] > 0.98


@pytest.mark.parametrize("model", ["vgg", "resnet", "trained"])
def test_the_early_stop_selects_the_iterate_of_the_full_run(model: str) -> None:
    if model == "trained":
        net, images, _ = _trained_cnn(2)
        layer = "features.bn3"
    else:
        torch.manual_seed(0)
        net = VGG(3, widths=(4, 8), convs_per_stage=1) if model == "vgg" else ResNet(3, widths=(4, 8))
        images, layer = _images(4), "features.relu2" if model == "vgg" else "layer2.0.relu2"
    options = dict(layer=layer, grid=8, samples=8)
    full = estimate_sigma_maps(net, images, patience=None, **options)  # every image to step 59, as the paper
    steps_run: list[int] = []
    for patience in (1, 3):  # 3 is the default
        stopped = estimate_sigma_maps(
            net, images, patience=patience, **options, progress=lambda d, t: steps_run.append(d)
        )
        assert torch.equal(stopped.step, full.step) and torch.equal(stopped.sigma, full.sigma), patience
    assert full.reached_target.all() and max(steps_run) == 80  # the bar completes even when every image stops early


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(method="jacobian"), r"`method` must be one of \('faithful', 'secant'\), got 'jacobian'"),
        (dict(passes=2), r"`passes`=2 applies to method='secant' only, got method='faithful'"),
        (dict(method="secant", passes=0), r"`passes` must be an integer ≥ 1, got 0"),
        (dict(patience=0), r"`patience` must be an integer ≥ 1, or None, got 0"),
    ],
)
def test_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate_sigma_maps(_net(), _images(1), layer="features.relu2", grid=4, samples=2, steps=2, **kwargs)


def test_maps_of_different_methods_are_not_concatenated() -> None:
    net, images = _net(), _images(1)
    faithful = estimate_sigma_maps(net, images, layer="features.relu1", grid=4, samples=2, steps=2)
    secant = estimate_sigma_maps(net, images, layer="features.relu1", grid=4, samples=2, steps=2, method="secant")
    assert faithful.method == "faithful" and secant.to("cpu").method == "secant"
    with pytest.raises(ValueError, match=r"different methods \['faithful', 'secant'\]"):
        SigmaMaps.cat([faithful, secant])
