"""The probes under the Trainer features users turn on: gradient accumulation, bf16 mixed precision, ``max_steps``,
``val_check_interval``, a network attribute not called ``student``, and resuming with ``ckpt_path``."""

import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, UniCAMProbe, WeightTrajectoryMonitor
from kd_probe.core.sigma import estimate_sigma_maps
from tests.callbacks.conftest import PROBE, loaders, tiny_data, tiny_net, trainer
from tests.callbacks.conftest import RecordingLogger as _Recorder

KNOWLEDGE_POINTS = "1_knowledge_points/n_fg"
AGREEMENT = "3_agreement/cam_cosine"
UNICAM = "4_unicam/fss/features.relu2"


def _probes(data: Any, network: str = "student", teacher: str | nn.Module = "teacher") -> list[pl.Callback]:
    """One of each: knowledge points, agreement, UniCAM (probing every epoch) and the weight trajectory."""
    return [
        KnowledgePointProbe(data, layer="features.bn2", module=network, **PROBE),
        AgreementProbe(
            data,
            teacher_layer="features.relu2",
            student_layer="features.relu2",
            student=network,
            teacher=teacher,
            transforms=("shift",),
            steps=2,
        ),
        UniCAMProbe(data, layers=["features.relu2"], cam_layer="features.relu2", student=network, teacher=teacher),
        WeightTrajectoryMonitor(module=network),
    ]


def _distillation() -> DistillationModule:
    teacher = tiny_net()
    torch.manual_seed(1)
    teacher.features.conv2.reset_parameters()  # a teacher that differs from the student
    return DistillationModule(tiny_net(), teacher, schedule=None)


def _steps(probe: Any) -> list[tuple[int, int]]:
    return [(entry["epoch"], entry["global_step"]) for entry in probe.history]


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


def _values(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in entry.items() if key not in ("epoch", "global_step")}


def _assert_entries_equal(x: dict[str, Any], y: dict[str, Any], where: object = None) -> None:
    """Bit for bit: tensors equal, floats equal (NaN where NaN), everything else ``==``."""
    assert x.keys() == y.keys(), where
    for key, value in x.items():
        other = y[key]
        if isinstance(value, Tensor):  # NaN where NaN (an empty CAM has no energy share)
            nan_where_nan = value.is_floating_point() and torch.allclose(value, other, rtol=0, atol=0, equal_nan=True)
            assert torch.equal(value, other) or nan_where_nan, (where, key)
        elif isinstance(value, dict):  # the agreement probe's per-image values
            _assert_entries_equal(value, other, (where, key))
        elif isinstance(value, float) and math.isnan(value):
            assert math.isnan(other), (where, key)
        else:
            assert value == other, (where, key)


def _assert_histories_equal(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [(e["epoch"], e["global_step"]) for e in a] == [(e["epoch"], e["global_step"]) for e in b]
    for x, y in zip(a, b, strict=True):
        _assert_entries_equal(x, y, x["epoch"])


def test_gradient_accumulation_probes_at_optimizer_steps_and_leaves_training_bitwise_unchanged(
    tmp_path: Path,
) -> None:
    data = tiny_data()  # 4 batches an epoch; 2 per optimizer step
    plain, probed = _distillation(), _distillation()
    torch.manual_seed(7)
    trainer(tmp_path / "plain", accumulate_grad_batches=2).fit(plain, datamodule=data)
    probes, recorder = _probes(data), _Recorder()
    torch.manual_seed(7)
    fit = trainer(tmp_path / "probed", accumulate_grad_batches=2, callbacks=probes, logger=recorder)
    fit.fit(probed, datamodule=data)
    _assert_same_weights(plain, probed)
    assert fit.global_step == 4
    for probe in probes[:3]:
        assert _steps(probe) == [(0, 0), (1, 2), (2, 4)], type(probe).__name__
    for tag in (KNOWLEDGE_POINTS, AGREEMENT, UNICAM):
        assert recorder.steps(tag) == [0, 2, 4], tag
    # the trajectory moves once per optimizer step, not once per batch
    assert recorder.steps("6_weights/features/step_length") == [1, 2, 3, 4]
    assert recorder.steps("6_weights/features/distance") == [2, 4]
    distances = [entry["distance"] for entry in probes[0].history]
    assert distances[0] == 0 and 0 < distances[1] < distances[2]


class _Dtypes(TorchDispatchMode):
    """The floating-point types of every tensor that every operation produces while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        self.seen.update(t.dtype for t in tree_leaves(result) if isinstance(t, Tensor) and t.is_floating_point())
        return result


def _spied(call: Callable[..., Any], spy: _Dtypes) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        with spy:
            return call(*args)

    return run


def test_bf16_mixed_precision_probes_compute_in_float32_and_say_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tiny_data()
    module = _distillation()
    knowledge_points, agreement, unicam, _ = probes = _probes(data)
    in_probes, in_training = _Dtypes(), _Dtypes()
    for probe in probes[:3]:
        probe.probe = _spied(probe.probe, in_probes)  # type: ignore[method-assign]
    module.training_step = _spied(module.training_step, in_training)  # type: ignore[method-assign]
    fit = trainer(tmp_path, precision="bf16-mixed", limit_val_batches=0, callbacks=probes)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        fit.fit(module, datamodule=data)
    assert torch.bfloat16 in in_training.seen  # autocast was on in the training step
    assert torch.float32 in in_probes.seen and not in_probes.seen & {torch.bfloat16, torch.float16}
    for probe in probes[:3]:
        assert _steps(probe) == [(0, 0), (1, 4), (2, 8)] and all(not e.get("failed") for e in probe.history)
    for owner in ("KnowledgePointProbe", "AgreementProbe", "UniCAMProbe"):
        note = rf"{owner}: the Trainer trains with precision='bf16-mixed'; the probe computes in float32"
        assert len(re.findall(note, caplog.text)) == 1, owner
    # the recorded numbers are those of the probe computed afterwards in float32, outside autocast
    maps = estimate_sigma_maps(
        module.student, knowledge_points.images, layer="features.bn2", indices=list(range(6)), **PROBE
    )
    assert torch.equal(maps.entropy, knowledge_points.history[-1]["entropy"])
    for probe in (agreement, unicam):
        outside, _ = probe.measure(fit, module, 2)
        _assert_entries_equal(_values(outside), _values(probe.history[-1]), type(probe).__name__)
        # a probe called from inside autocast turns it off: same numbers, no bf16 operation
        inside = _Dtypes()
        with torch.autocast("cpu", dtype=torch.bfloat16), inside:
            entry = probe.probe(trainer(tmp_path / "again"), module, 9)
        _assert_entries_equal(_values(entry), _values(outside), type(probe).__name__)
        assert inside.seen and torch.bfloat16 not in inside.seen, type(probe).__name__


def test_a_precision_whose_weights_are_not_float32_is_refused_at_the_start_of_fit(tmp_path: Path) -> None:
    data = tiny_data()
    probe = UniCAMProbe(data, layers=["features.relu2"], cam_layer="features.relu2")
    message = (
        r"Trainer\(precision='bf16-true'\) keeps the weights in another type than float32; UniCAMProbe computes in "
        r"float32 and needs float32 weights: train with precision='bf16-mixed'\."
    )
    with pytest.raises(ValueError, match=message):
        trainer(tmp_path, precision="bf16-true", callbacks=[probe]).fit(_distillation(), datamodule=data)
    assert probe.history == []


def test_max_steps_without_max_epochs_probes_each_epoch_and_the_last_partial_one(tmp_path: Path) -> None:
    data = tiny_data()
    probes, recorder = _probes(data), _Recorder()
    fit = trainer(tmp_path, max_epochs=-1, max_steps=10, callbacks=probes, logger=recorder)
    fit.fit(_distillation(), datamodule=data)
    assert fit.global_step == 10
    # 4 steps an epoch: after epochs 1 and 2, and after the third, stopped at max_steps (the final weights)
    for probe in probes[:3]:
        assert _steps(probe) == [(0, 0), (1, 4), (2, 8), (3, 10)], type(probe).__name__
    for tag in (KNOWLEDGE_POINTS, AGREEMENT, UNICAM):
        assert recorder.steps(tag) == [0, 4, 8, 10], tag
    assert recorder.steps("6_weights/features/distance") == [4, 8, 10]
    assert recorder.steps("6_weights/head/path_efficiency") == [10]
    paper = KnowledgePointProbe(data, layer="features.bn2", epochs="paper", **PROBE)
    with pytest.raises(ValueError, match=r"`epochs='paper'` .* got max_epochs=-1 \(a run bounded by `max_steps`"):
        trainer(tmp_path, max_epochs=-1, max_steps=10, callbacks=[paper]).fit(_distillation(), datamodule=data)


class _Order(pl.Callback):
    """How many probes had run at each validation end and each training-epoch end (listed after the probes)."""

    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self.events: list[tuple[str, int, int]] = []

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.events.append(("validation", trainer.global_step, len(self.probe.history)))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.events.append(("epoch end", trainer.global_step, len(self.probe.history)))


def test_val_check_interval_probes_once_per_epoch_after_its_last_validation(tmp_path: Path) -> None:
    data = tiny_data()
    probes, recorder = _probes(data), _Recorder()
    orders = [_Order(probe) for probe in probes[:3]]
    fit = trainer(tmp_path, val_check_interval=0.5, callbacks=[*probes, *orders], logger=recorder)
    fit.fit(_distillation(), datamodule=data)
    for probe, order in zip(probes[:3], orders, strict=True):
        assert _steps(probe) == [(0, 0), (1, 4), (2, 8)], type(probe).__name__
        assert order.events == [
            ("validation", 2, 1),  # mid-epoch validation: no probe
            ("validation", 4, 1),  # the epoch's last validation comes before the epoch's probe …
            ("epoch end", 4, 2),  # … which runs once, at the end of the training epoch
            ("validation", 6, 2),
            ("validation", 8, 2),
            ("epoch end", 8, 3),
        ], type(probe).__name__
    for tag in (KNOWLEDGE_POINTS, AGREEMENT, UNICAM):
        assert recorder.steps(tag) == [0, 4, 8], tag
    assert recorder.steps("6_weights/features/distance") == [4, 8]


class _Classifier(pl.LightningModule):
    """A plain LightningModule whose network is ``self.model``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny_net()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: Any, _: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_a_network_attribute_named_model_is_probed_with_module_model(tmp_path: Path) -> None:
    data = tiny_data()
    module = _Classifier()
    teacher = tiny_net()  # the same weights as the model at epoch 0
    probes, recorder = _probes(data, network="model", teacher=teacher), _Recorder()
    by_path = KnowledgePointProbe(data, layer="model.features.bn2", name="by_path", **PROBE)  # module=None: itself
    trainer(tmp_path, callbacks=[*probes, by_path], logger=recorder).fit(
        module, train_dataloaders=loaders(data)["train_dataloaders"]
    )
    knowledge_points, agreement, unicam, _ = probes
    for probe in probes[:3]:
        assert _steps(probe) == [(0, 0), (1, 4), (2, 8)] and all(not e.get("failed") for e in probe.history)
    _assert_histories_equal(
        [{k: v for k, v in e.items() if k != "distance"} for e in knowledge_points.history],
        [{k: v for k, v in e.items() if k != "distance"} for e in by_path.history],
    )
    assert agreement.history[0]["cam_cosine"] == pytest.approx(1.0, abs=1e-5)  # model = teacher before training
    assert unicam.history[0]["fss/features.relu2"] == pytest.approx(1.0, abs=1e-5)
    assert agreement.history[-1]["cam_cosine"] < 1 - 1e-4  # and it is the trained model that is probed
    assert unicam.history[-1]["fss/features.relu2"] < 1 - 1e-4
    for child in ("features", "head"):  # the trajectory tracks the model's children
        assert recorder.steps(f"6_weights/{child}/distance") == [4, 8]
    wrong = KnowledgePointProbe(data, layer="features.bn2", module="student", **PROBE)
    with pytest.raises(ValueError, match=r"`module`='student' is not an attribute path of _Classifier.*\['model'\]"):
        trainer(tmp_path, callbacks=[wrong]).fit(_Classifier(), train_dataloaders=loaders(data)["train_dataloaders"])


@pytest.mark.slow
def test_resuming_with_ckpt_path_gives_the_uninterrupted_histories_and_weights(tmp_path: Path) -> None:
    data = tiny_data()  # unshuffled loaders and a constant learning rate: 1 epoch is the start of 3
    full = _probes(data)
    uninterrupted = _distillation()
    trainer(tmp_path / "full", max_epochs=3, callbacks=full).fit(uninterrupted, **loaders(data))
    # written on validation end, before the end-of-epoch probes: the resumed run catches them up
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = _probes(data)
    trainer(tmp_path / "first", max_epochs=1, callbacks=[*first, checkpoints], enable_checkpointing=True).fit(
        _distillation(), **loaders(data)
    )
    resumed = _probes(data)
    continued = _distillation()
    trainer(tmp_path / "resumed", max_epochs=3, callbacks=resumed).fit(
        continued, ckpt_path=tmp_path / "ckpt" / "last.ckpt", **loaders(data)
    )
    _assert_same_weights(uninterrupted, continued)
    for a, b in zip(full[:3], resumed[:3], strict=True):
        assert _steps(b) == [(0, 0), (1, 4), (2, 8), (3, 12)], type(b).__name__
        _assert_histories_equal(b.history, a.history)
    assert [m["epoch"] for m in resumed[2].maps] == [m["epoch"] for m in full[2].maps] == [0, 1, 2, 3]
    for x, y in zip(full[2].maps, resumed[2].maps, strict=True):
        assert torch.equal(x["distilled"], y["distilled"]) and torch.equal(x["residual"], y["residual"])
    a, b = full[3].summary(), resumed[3].summary()
    assert a.keys() == b.keys() == {"features", "head"}
    for name in a:
        assert b[name]["distance"] == pytest.approx(a[name]["distance"], rel=1e-9), name
        assert b[name]["update_cosine"] == pytest.approx(a[name]["update_cosine"], abs=1e-9), name
        assert b[name]["path_efficiency"] == pytest.approx(a[name]["path_efficiency"], abs=1e-9), name
