"""The σ engine's ``precision`` (issue 32, methods §4.6): float32 with TF32 off or on, or the forward in bfloat16."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn

from kd_probe import DistillationModule, KnowledgePointProbe, SigmaMaps, estimate_sigma_maps
from kd_probe.models import VGG
from tests.callbacks.conftest import PROBE, tiny_data, tiny_net, trainer

LAYER = "features.relu1"
FAST: dict[str, Any] = dict(layer=LAYER, grid=4, samples=8, steps=30, patience=None)
METHODS = ("faithful", "secant")
NEW_API = hasattr(torch.backends, "fp32_precision")  # torch ≥ 2.9: each backend's float32 precision on its own
BACKENDS = (
    "",
    "cuda.matmul",
    "cudnn",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)
BAD = "`precision` must be None, 'float32', 'tf32' or 'bf16', got {}."


def _net() -> VGG:
    torch.manual_seed(0)
    return VGG(num_classes=3, widths=(8,), convs_per_stage=1)


def _images(count: int = 3) -> Tensor:
    return torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _backend(name: str) -> Any:
    found: Any = torch.backends
    for part in filter(None, name.split(".")):
        found = getattr(found, part)
    return found


def _flags() -> dict[str, object]:
    """Every float32-precision flag, by name; a legacy getter that refuses (torch ≥ 2.9 once the new API has made
    a state the legacy one cannot say) reads as ``"refused"``."""

    def read(getter: Callable[[], object]) -> object:
        try:
            return getter()
        except RuntimeError:
            return "refused"

    flags = {
        "matmul.allow_tf32": read(lambda: torch.backends.cuda.matmul.allow_tf32),
        "cudnn.allow_tf32": read(lambda: torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": read(torch.get_float32_matmul_precision),
    }
    if NEW_API:
        flags |= {name or "generic": _backend(name).fp32_precision for name in BACKENDS}
    return flags


@pytest.fixture
def restore_flags() -> Iterator[None]:
    """The process's float32 flags as they were before the test (the legacy setters first, then the new API's)."""
    legacy = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    saved = {name: _backend(name).fp32_precision for name in BACKENDS} if NEW_API else {}
    yield
    torch.set_float32_matmul_precision(legacy[0])
    torch.backends.cudnn.allow_tf32 = legacy[1]
    for name, value in saved.items():
        _backend(name).fp32_precision = value


def _finite(maps: SigmaMaps) -> bool:
    return all(bool(torch.isfinite(value.float()).all()) for value in maps.tensors().values())


@pytest.mark.parametrize("method", METHODS)
def test_float32_and_tf32_give_the_default_maps_bit_for_bit_on_the_cpu(method: str) -> None:
    net, images = _net(), _images()
    default = estimate_sigma_maps(net, images, method=method, **FAST)
    for precision in (None, "float32", "tf32"):
        maps = estimate_sigma_maps(net, images, method=method, precision=precision, **FAST)
        for name, value in default.tensors().items():
            assert torch.equal(getattr(maps, name), value), (precision, name)


def test_float32_pins_the_cpus_matmuls_to_float32_when_the_user_allowed_bfloat16(restore_flags: None) -> None:
    """``set_float32_matmul_precision("medium")`` lets oneDNN compute float32 matmuls in bfloat16 (on a CPU that has
    it); ``precision="float32"`` gives the maps of the default "highest" all the same."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 64))
    options: dict[str, Any] = dict(layer="1", grid=4, samples=8, steps=5, precision="float32")
    highest = estimate_sigma_maps(net, _images(2), **options)
    torch.set_float32_matmul_precision("medium")
    assert torch.equal(estimate_sigma_maps(net, _images(2), **options).sigma, highest.sigma)


def _set_legacy_flags() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True  # by default off and on: each the other way
    torch.backends.cudnn.allow_tf32 = False


def _set_new_api_flags() -> None:
    if not NEW_API:
        pytest.skip("torch < 2.9 has no fp32_precision")
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # the legacy getters refuse this state
    _backend("mkldnn.matmul").fp32_precision = "bf16"  # oneDNN matmuls in bfloat16 on a CPU that has it


def _inside(before: dict[str, object], precision: str | None) -> dict[str, object]:
    """The flags a call with ``precision`` reads inside (on torch ≥ 2.9 the new API's only: the legacy getters may
    refuse a state set through it)."""
    if precision is None:
        return before
    value = "tf32" if precision == "tf32" else "ieee"  # bf16: float32 for what stays in float32
    if not NEW_API:
        legacy = {"matmul.allow_tf32": value == "tf32", "cudnn.allow_tf32": value == "tf32"}
        return {**before, **legacy, "float32_matmul_precision": "highest" if value == "ieee" else "high"}
    pinned = ["cuda.matmul", "cudnn.conv", "cudnn.rnn"] + ["mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn"] * (
        value == "ieee"
    )
    return {name: before[name] for name in (n or "generic" for n in BACKENDS)} | dict.fromkeys(pinned, value)


@pytest.mark.parametrize("setup", [_set_legacy_flags, _set_new_api_flags], ids=["legacy", "new-api"])
@pytest.mark.parametrize("precision", [None, "float32", "tf32", "bf16"])
def test_the_float32_flags_are_set_inside_and_restored_after_a_call_also_one_that_raises(
    restore_flags: None, setup: Callable[[], None], precision: str | None
) -> None:
    setup()
    before = _flags()
    expected = _inside(before, precision)
    seen: list[dict[str, object]] = []

    def record() -> None:
        flags = _flags()
        seen.append({name: flags[name] for name in expected})

    estimate_sigma_maps(_net(), _images(1), precision=precision, check=record, **{**FAST, "steps": 2})
    assert seen and all(flags == expected for flags in seen)
    assert _flags() == before

    def stop() -> None:
        record()
        raise KeyboardInterrupt  # what a Ctrl-C does between steps

    with pytest.raises(KeyboardInterrupt):
        estimate_sigma_maps(_net(), _images(1), precision=precision, check=stop, **FAST)
    assert seen[-1] == expected
    assert _flags() == before


def _entropy_change(maps: SigmaMaps, reference: SigmaMaps) -> float:
    return float((maps.entropy - reference.entropy).abs().mean())


@pytest.mark.parametrize("method", METHODS)
def test_bf16_maps_are_finite_float32_and_move_less_than_another_seed_does(method: str) -> None:
    """bfloat16 features change the maps; issue 32's measure is the seed-to-seed floor. σ_f comes from the float32
    forward on the same noise (the very σ_f of float32), so the maps move by far less than another seed's (mean
    |ΔH| 0.10–0.12× the floor's here); with σ_f through bfloat16 too, its rounding inflated σ_f and the maps moved
    by 0.7–0.9× the floor's: half the floor tells the two apart."""
    net, images = _net(), _images()
    float32 = estimate_sigma_maps(net, images, method=method, **FAST)
    bf16 = estimate_sigma_maps(net, images, method=method, precision="bf16", **FAST)
    other_seed = estimate_sigma_maps(net, images, method=method, seed=1, **FAST)
    assert bf16.sigma.shape == float32.sigma.shape == (3, 4, 4) and bf16.sigma.dtype == torch.float32
    assert _finite(bf16) and bf16.method == method and bool(bf16.effective.all())
    assert torch.equal(bf16.sigma_f, float32.sigma_f)
    assert not torch.equal(bf16.sigma, float32.sigma)
    assert 0 < _entropy_change(bf16, float32) <= 0.5 * _entropy_change(other_seed, float32)


class _Amplified(nn.Module):
    """Two convolutions after a fixed per-pixel gain: the amplified pixels' unit is the one the feature keeps."""

    gain: Tensor

    def __init__(self, gain: Tensor) -> None:
        super().__init__()
        self.register_buffer("gain", gain)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x * self.gain)


@pytest.mark.parametrize("method", METHODS)
def test_bf16_still_finds_the_amplified_unit(method: str) -> None:
    torch.manual_seed(0)
    gain = torch.ones(16, 16)
    gain[4:6, 10:12] = 10.0  # unit (2, 5) of the 8×8 grid
    options: dict[str, Any] = dict(layer="body.2", grid=8, samples=16, steps=80, method=method, precision="bf16")
    maps = estimate_sigma_maps(_Amplified(gain), _images(), **options)
    assert maps.entropy.flatten(1).argmin(1).tolist() == [2 * 8 + 5] * 3


@pytest.mark.parametrize("method", METHODS)
def test_bf16_maps_do_not_depend_on_batching_or_on_a_callers_autocast(method: str) -> None:
    net, images = _net(), _images(4)
    options: dict[str, Any] = dict(method=method, precision="bf16", **FAST)
    batched = estimate_sigma_maps(net, images, **options)
    singles = SigmaMaps.cat(
        [estimate_sigma_maps(net, images[i : i + 1], indices=[i], **options) for i in range(images.shape[0])]
    )
    chunked = estimate_sigma_maps(net, images, max_batch=2, **options)
    for other in (singles, chunked):
        torch.testing.assert_close(other.sigma, batched.sigma, atol=1e-6, rtol=0)  # as float32's guarantee
        assert torch.equal(other.step, batched.step)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = estimate_sigma_maps(net, images, **options)
    assert torch.equal(inside.sigma, batched.sigma)


@pytest.mark.parametrize("value", ["fp16", "BF16", "float64", 16, torch.bfloat16, True])
def test_a_bad_precision_is_refused_in_one_sentence_by_the_function_and_the_probe(value: object) -> None:
    with pytest.raises(ValueError) as error:
        estimate_sigma_maps(_net(), _images(1), precision=value, **FAST)  # type: ignore[arg-type]
    assert str(error.value) == BAD.format(repr(value))
    with pytest.raises(ValueError) as error:
        KnowledgePointProbe(_images(2), torch.ones(2, 16, 16), layer=LAYER, precision=value)
    assert str(error.value) == BAD.format(repr(value))


@pytest.mark.filterwarnings("ignore:kd_probe. no TensorBoardLogger")
def test_a_probe_passes_its_precision_on_and_records_it(tmp_path: Path) -> None:
    data = tiny_data()
    sigma: dict[str, Any] = {**PROBE, "precision": "bf16"}
    probe = KnowledgePointProbe(data, layer="features.conv2", **sigma)
    module = DistillationModule(tiny_net(batch_norm=False), lr=1e-30)  # updates far below one ulp: weights fixed
    trainer(tmp_path, callbacks=[probe], logger=CSVLogger(tmp_path), max_epochs=1).fit(module, datamodule=data)
    folder = tmp_path / "lightning_logs" / "version_0"
    history = torch.load(folder / "kd_probe_history.pt", weights_only=False)
    assert [entry["failed"] for entry in history["entries"]] == [None, None]
    assert history["settings"]["precision"] == "bf16"
    assert json.loads((folder / "kd_probe_summary.json").read_text())["settings"]["precision"] == "bf16"
