import math

import pytest
import torch
from torch import nn

from benchmarks.sigma_oracle import oracle_sigma_maps
from kd_probe import count_knowledge_points, estimate_sigma_maps
from kd_probe.core.sigma import SIGMA_INIT, SIGMA_RANGE, SigmaMaps, gaussian_entropy
from kd_probe.models import VGG

FAST = dict(grid=8, samples=8, steps=30)  # boost check at step 9


class _Gated(nn.Module):
    """Multiplies its input by a fixed per-pixel gain before two convolutions."""

    def __init__(self, gain: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("gain", gain)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x * self.gain).flatten(1))


def _net() -> VGG:
    torch.manual_seed(0)
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)


def _images(count: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_hidden_region_keeps_free_sigma_and_knowledge_points_are_only_on_the_visible_region() -> None:
    visible = torch.zeros(16, 16)
    visible[:, :8] = 1
    maps = estimate_sigma_maps(_Gated(visible), _images(), layer="body.2", grid=8, samples=16, steps=80)
    hidden_units, visible_units = maps.entropy[:, :, 4:], maps.entropy[:, :, :4]
    assert (hidden_units.flatten(1).min(1).values >= visible_units.flatten(1).max(1).values).all()
    assert torch.equal(hidden_units, hidden_units[:, :1, :1].expand_as(hidden_units))  # one free trajectory
    points = count_knowledge_points(maps.entropy, visible.expand(3, 16, 16))
    assert points.n_bg.tolist() == [0, 0, 0]
    assert (points.n_fg > 0).all()
    assert points.fg_ratio == 1.0


def test_an_amplified_unit_has_the_lowest_entropy() -> None:
    gain = torch.ones(16, 16)
    gain[4:6, 10:12] = 10.0  # unit (2, 5) of the 8×8 grid
    maps = estimate_sigma_maps(_Gated(gain), _images(), layer="body.2", grid=8, samples=16, steps=80)
    assert maps.entropy.flatten(1).argmin(1).tolist() == [2 * 8 + 5] * 3


def test_batched_equals_per_image_in_any_order_and_sharding() -> None:
    net, images = _net(), _images(4)
    batched = estimate_sigma_maps(net, images, layer="features.relu2", **FAST)
    singles = SigmaMaps.cat(
        [estimate_sigma_maps(net, images[i : i + 1], layer="features.relu2", indices=[i], **FAST) for i in range(4)]
    )
    order = [2, 0, 3, 1]
    shuffled = estimate_sigma_maps(net, images[order], layer="features.relu2", indices=order, **FAST)
    shards = [
        estimate_sigma_maps(net, images[s], layer="features.relu2", indices=list(range(4))[s], **FAST)
        for s in (slice(0, 1), slice(1, 4))
    ]
    for other, permutation in ((singles, range(4)), (SigmaMaps.cat(shards), range(4)), (shuffled, order)):
        torch.testing.assert_close(other.sigma, batched.sigma[list(permutation)], atol=1e-6, rtol=0)
        assert torch.equal(other.step, batched.step[list(permutation)])


def test_chunked_equals_unchunked() -> None:
    net, images = _net(), _images(3)
    whole = estimate_sigma_maps(net, images, layer="features.relu2", max_batch=10_000, **FAST)
    for max_batch in (3, 8, 16):  # sample slices of one image; one image; two images per forward
        chunked = estimate_sigma_maps(net, images, layer="features.relu2", max_batch=max_batch, **FAST)
        torch.testing.assert_close(chunked.sigma, whole.sigma, atol=1e-6, rtol=0)
        torch.testing.assert_close(chunked.sigma_f, whole.sigma_f, atol=0, rtol=1e-5)
        assert torch.equal(chunked.step, whole.step)


def test_library_equals_the_straightforward_oracle() -> None:
    net, images = _net(), _images(3)
    maps = estimate_sigma_maps(net, images, layer="features.relu2", grid=8, samples=8, steps=40)
    sigma, steps, sigma_f = oracle_sigma_maps(net, images, layer="features.relu2", grid=8, samples=8, steps=40)
    torch.testing.assert_close(maps.sigma, sigma, atol=1e-6, rtol=0)
    assert maps.step.tolist() == steps.tolist()
    torch.testing.assert_close(maps.sigma_f, sigma_f, atol=0, rtol=1e-5)


def test_layers_above_the_probed_one_never_run() -> None:
    net, calls = _net(), []
    net.features.conv2.register_forward_hook(lambda *_: calls.append(1))
    estimate_sigma_maps(net, _images(2), layer="features.relu1", grid=4, samples=4, steps=3)
    assert calls == []


def _boost_reference(steps: int, lam: float, target: float, grid: int) -> tuple[int, bool, float]:
    """Dead features: only the entropy term moves σ, σ ← clamp(σ) + lr·λ/(grid²·σ), all units alike."""
    sigma, weight, history, boosted = SIGMA_INIT, lam, [], False
    for step in range(steps):
        sigma = min(max(sigma, SIGMA_RANGE[0]), SIGMA_RANGE[1])
        history.append((sigma, math.log(sigma) + 0.5 * math.log(2 * math.pi * math.e)))
        sigma += 1e-4 * weight / (grid * grid * sigma)
        if step == steps - 21:
            if max(h for _, h in history) > target:
                break
            weight, boosted = weight * 1.5, True
    best = min(range(len(history)), key=lambda i: abs(history[i][1] - target))
    return best, boosted, history[best][0]


@pytest.mark.parametrize("lam", [0.3, 7.0])  # not reached by step 9 → boosted; reached → stop at step 9
def test_dead_features_follow_the_entropy_only_trajectory_with_boost_and_selection(lam: float) -> None:
    dead = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU())
    nn.init.zeros_(dead[0].weight)
    nn.init.constant_(dead[0].bias, -1.0)  # ReLU(−1) = 0 whatever the input: σ_f = 0
    maps = estimate_sigma_maps(dead, _images(2), layer="1", grid=4, samples=4, steps=30, lam=lam)
    step, boosted, sigma = _boost_reference(30, lam, -2.8, 4)
    assert maps.effective.tolist() == [False, False] and maps.sigma_f.tolist() == [0.0, 0.0]
    assert maps.step.tolist() == [step, step]
    assert maps.boosted.tolist() == [boosted, boosted]
    torch.testing.assert_close(maps.sigma, torch.full((2, 4, 4), sigma), atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.entropy, gaussian_entropy(maps.sigma))
    torch.testing.assert_close(maps.mean_entropy, maps.entropy.mean(dim=(1, 2)))
    points = count_knowledge_points(maps.entropy, torch.ones(2, 16, 16), effective=maps.effective)
    assert points.points.sum() == 0


def _snapshot(net: nn.Module) -> dict:
    return {
        "modes": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "rng": torch.get_rng_state(),
        "hooks": sum(len(m._forward_hooks) for m in net.modules()),
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"] and before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    assert torch.equal(before["rng"], after["rng"])


def _messy_net() -> VGG:
    net = _net().train()
    net.features.bn1.eval()  # a mixed mode tree
    net.features.conv1.weight.requires_grad_(False)
    net.head.fc.weight.grad = torch.ones_like(net.head.fc.weight)
    return net


def test_no_side_effects_on_the_model_or_the_global_rng() -> None:
    net = _messy_net()
    before = _snapshot(net)
    estimate_sigma_maps(net, _images(2), layer="features.relu2", grid=4, samples=4, steps=5)
    _assert_same(before, _snapshot(net))


def test_no_side_effects_when_the_call_raises() -> None:
    net = _messy_net()
    calls = []

    def fail_on_third_call(*_: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    handle = net.features.conv2.register_forward_hook(fail_on_third_call)
    before = _snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        estimate_sigma_maps(net, _images(2), layer="features.relu2", grid=4, samples=4, steps=5, fold_batchnorm=False)
    _assert_same(before, _snapshot(net))
    handle.remove()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad_and_inference_mode_callers(context: type) -> None:
    net, images = _net(), _images(2)
    expected = estimate_sigma_maps(net, images, layer="features.relu2", grid=4, samples=4, steps=5)
    with context():
        inside = estimate_sigma_maps(net, images.clone(), layer="features.relu2", grid=4, samples=4, steps=5)
    assert torch.equal(inside.sigma, expected.sigma)


def test_a_model_made_of_inference_tensors_gets_a_clear_error() -> None:
    with torch.inference_mode():
        net = _net()
    with pytest.raises(RuntimeError, match="parameters are inference tensors"):
        estimate_sigma_maps(net, _images(1), layer="features.relu2", grid=4, samples=2, steps=2, fold_batchnorm=False)


def test_channels_last_and_contiguous_inputs_agree() -> None:
    net, images = _net(), _images(2)
    fast = estimate_sigma_maps(net, images, layer="features.relu2", channels_last=True, **FAST)
    plain = estimate_sigma_maps(net, images, layer="features.relu2", channels_last=False, **FAST)
    torch.testing.assert_close(fast.sigma, plain.sigma, atol=1e-6, rtol=0)


def test_a_model_that_refuses_channels_last_inputs_falls_back() -> None:
    class Viewing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.fc = nn.Linear(3 * 8 * 8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.view(x.shape[0], -1)) + self.conv(x).mean()

    maps = estimate_sigma_maps(Viewing(), _images(1, 8), layer="fc", grid=4, samples=4, steps=3)
    assert maps.effective.all()


def test_empty_batch_gives_empty_maps() -> None:
    maps = estimate_sigma_maps(_net(), torch.zeros(0, 3, 16, 16), layer="features.relu2", grid=4)
    assert len(maps) == 0 and maps.entropy.shape == (0, 4, 4)


def test_progress_is_reported_after_every_step() -> None:
    seen: list[tuple[int, int]] = []
    estimate_sigma_maps(
        _net(),
        _images(1),
        layer="features.relu1",
        grid=4,
        samples=2,
        steps=4,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(layer="features.rel2"),
            r"`layer`='features.rel2' is not a module of VGG; close matches: 'features.relu2'",
        ),
        (dict(images=torch.zeros(3, 16, 16)), r"`images` must be a 4-D float tensor \[N, C, H, W\], got a 3-D"),
        (
            dict(images=torch.zeros(1, 3, 16, 16, dtype=torch.uint8)),
            r"`images` must be a 4-D float tensor.*torch.uint8",
        ),
        (dict(images=torch.full((2, 3, 16, 16), math.nan)), r"`images` contains NaN or infinite values \(in 2 of 2"),
        (dict(images=torch.full((1, 3, 16, 16), math.inf)), r"`images` contains NaN or infinite values"),
        (dict(grid=17), r"`grid` must be an integer ≥ 1, at most the image size 16×16, got 17"),
        (dict(samples=0), r"`samples` must be an integer ≥ 1, got 0"),
        (dict(lr=-1.0), r"`lr` must be a positive number, got -1.0"),
        (dict(indices=[0]), r"`indices` must be 2 non-negative integers \(one per image\), got \[0\]"),
    ],
)
def test_clear_errors(kwargs: dict, message: str) -> None:
    options = dict(images=_images(2), layer="features.relu2", grid=4, samples=2, steps=2)
    options.update(kwargs)
    images = options.pop("images")
    with pytest.raises(ValueError, match=message):
        estimate_sigma_maps(_net(), images, **options)


class _Abandoned(Exception):
    """What a user's stop request raises inside ``check``."""


@pytest.mark.parametrize("max_batch", [256, 2])  # one chunk per pass; 4 chunks per pass (2 images × 2 halves)
def test_check_runs_before_every_step_and_chunk(max_batch: int) -> None:
    calls: list[int] = []
    estimate_sigma_maps(
        _net(),
        _images(2),
        layer="features.relu2",
        grid=4,
        samples=4,
        steps=3,
        max_batch=max_batch,
        check=lambda: calls.append(1),
    )
    chunks = 1 if max_batch == 256 else 4
    assert len(calls) == chunks + 3 * (1 + chunks)  # normaliser chunks, then per step: the step and its chunks


@pytest.mark.parametrize("stop_at", [1, 5, 11])  # the normaliser's first chunk; the first step; the 2nd step's chunk
def test_check_can_abandon_the_work_and_the_model_is_restored(stop_at: int) -> None:
    net = _messy_net()
    before = _snapshot(net)
    calls: list[int] = []
    raised = _Abandoned("stop requested")

    def check() -> None:
        calls.append(1)
        if len(calls) == stop_at:
            raise raised

    with pytest.raises(_Abandoned) as caught:
        estimate_sigma_maps(
            net, _images(2), layer="features.relu2", grid=4, samples=4, steps=5, max_batch=2, check=check
        )
    assert caught.value is raised and len(calls) == stop_at
    _assert_same(before, _snapshot(net))


def test_a_compiled_model_gives_the_eager_maps_without_recompiling() -> None:
    compilations = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        compilations.append(graph)
        return graph.forward

    torch.manual_seed(0)
    net, images = VGG(num_classes=3, widths=(4, 8)), torch.randn(2, 3, 16, 16)
    compiled = torch.compile(net, backend=counting_backend)
    compiled(images).sum().backward()
    eager = estimate_sigma_maps(net, images, layer="features.relu2", **FAST)
    for layer in ("features.relu2", "_orig_mod.features.relu2"):
        maps = estimate_sigma_maps(compiled, images, layer=layer, **FAST)
        torch.testing.assert_close(maps.sigma, eager.sigma, rtol=0, atol=0)
    compiled(images).sum().backward()
    assert len(compilations) == 1
