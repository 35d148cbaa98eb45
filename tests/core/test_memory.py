"""Memory-aware batching of the σ engines (issue 32), on the CPU with a simulated device: the batch follows the
budget and the measured cost, an out-of-memory error halves it and repeats the computation with the same noise,
and the maps never depend on it."""

import pytest
import torch
from torch import nn

from kd_probe import estimate_sigma_maps
from kd_probe.core import sigma as sigma_module
from kd_probe.core._sigma_engines import SampledObjective
from kd_probe.core.memory import DEFAULT_BUDGET, batch_for_budget, budget_bytes, is_out_of_memory
from kd_probe.models import VGG

FAST = dict(layer="features.relu2", grid=4, samples=8, steps=12, fold_batchnorm=False)  # the hooks below run


def _net() -> VGG:
    torch.manual_seed(0)
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1).eval()


def _images(count: int = 3) -> torch.Tensor:
    return torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(1))


class Cramped(nn.Module):
    """``net``, on a device that runs out of memory above ``limit`` inputs per forward; records each batch."""

    def __init__(self, net: nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit, self.batches = net, limit, []  # type: ignore[var-annotated]
        net.features.conv1.register_forward_pre_hook(self._check)

    def _check(self, module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        if inputs[0].shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {inputs[0].shape[0]} inputs")
        self.batches.append(inputs[0].shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("method", ["faithful", "secant"])
def test_out_of_memory_halves_the_batch_and_gives_the_same_maps(method: str) -> None:
    images = _images()
    cramped = Cramped(_net(), limit=8)
    with pytest.warns(UserWarning) as warned:
        maps = estimate_sigma_maps(
            cramped, images, method=method, max_batch=64, **{**FAST, "layer": "net.features.relu2"}
        )
    assert [str(w.message) for w in warned] == [
        "kd_probe: the device ran out of memory at max_batch=64 perturbed inputs per pass; the σ maps were "
        "computed with max_batch=8 instead (the same maps, slower). Pass max_batch=8 or a smaller memory_budget "
        "to start there."
    ]
    assert max(cramped.batches) == 8
    direct = estimate_sigma_maps(_net(), images, method=method, max_batch=8, **FAST)
    for name in ("sigma", "sigma_f", "entropy", "step"):
        assert torch.equal(getattr(maps, name), getattr(direct, name)), name


def test_an_out_of_memory_error_at_one_input_is_raised() -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        estimate_sigma_maps(
            Cramped(_net(), limit=0), _images(1), max_batch=4, **{**FAST, "layer": "net.features.relu2"}
        )


def test_other_errors_are_not_retried() -> None:
    def hook(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        if inputs[0].shape[0] > 1:  # the clean features go one input at a time; the perturbed ones do not
            raise RuntimeError("shapes do not match")

    net = _net()
    net.features.conv1.register_forward_pre_hook(hook)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        estimate_sigma_maps(net, _images(1), max_batch=4, **FAST)


def test_the_automatic_batch_fits_the_budget_at_the_measured_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A simulated GPU: 1 MiB of budget and 40 KiB per perturbed input → 24 inputs per pass (a multiple of 8: 3 images × 8 samples)."""
    monkeypatch.setattr(sigma_module, "budget_bytes", lambda budget, device: 2**20)
    monkeypatch.setattr(SampledObjective, "trial_cost", lambda self, inputs=8: 40 * 1024.0)
    net = _net()
    seen: list[int] = []
    net.features.conv1.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[0]))
    maps = estimate_sigma_maps(net, _images(), **FAST)
    assert max(seen) == 24 and batch_for_budget(40 * 1024.0, 2**20) == 24
    direct = estimate_sigma_maps(_net(), _images(), max_batch=24, **FAST)
    assert torch.equal(maps.sigma, direct.sigma)


def test_budgets_and_batches_known_answers() -> None:
    assert budget_bytes(None, "cpu") is None  # the CPU keeps its fixed default
    assert budget_bytes(None, "cpu", free=64 * 2**30) == DEFAULT_BUDGET
    assert budget_bytes(None, "cpu", free=6 * 2**30) == 3 * 2**30
    assert budget_bytes(0.5, "cpu", free=1000) == 500
    assert budget_bytes(12 * 2**30, "cpu") == 12 * 2**30
    assert batch_for_budget(3.0e6, 2**30) == 352 and batch_for_budget(float("nan"), 2**30) == 4096
    assert batch_for_budget(2**20, 7 * 2**20) == 7 and batch_for_budget(1.0, 2**40, most=512) == 512
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("size mismatch")) and not is_out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize("budget", [0, 0.0, 1.5, -3, float("nan"), "8GB", True])
def test_a_bad_budget_is_one_sentence(budget: object) -> None:
    with pytest.raises(ValueError) as error:
        estimate_sigma_maps(_net(), _images(1), memory_budget=budget, **FAST)  # type: ignore[arg-type]
    assert str(error.value) == (
        "`memory_budget` must be None, a fraction of the free memory in (0, 1] or a number of bytes ≥ 1, got "
        f"{budget!r}."
    )


def test_noise_drawn_on_the_cpu_is_the_cpu_noise() -> None:
    """``noise_device="cpu"`` (issue 32): the noise of the CPU's generators, copied to the inputs' device; on the
    CPU it is the default draw, so the maps are the same bit for bit (on a GPU it makes the GPU use the CPU's
    noise: ``benchmarks/bench_gpu.py`` measures its cost)."""
    default = estimate_sigma_maps(_net(), _images(), **FAST)
    on_cpu = estimate_sigma_maps(_net(), _images(), noise_device="cpu", **FAST)
    assert torch.equal(default.sigma, on_cpu.sigma)
    with pytest.raises(ValueError) as error:
        estimate_sigma_maps(_net(), _images(), noise_device="cuda", **FAST)
    assert str(error.value) == "`noise_device` must be None (the inputs' device) or 'cpu', got 'cuda'."
