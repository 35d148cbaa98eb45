"""``WeightTrajectoryMonitor`` under faults (issue 28): a logger that raises, frozen parameters, a refused precision."""

import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from kd_probe import WeightTrajectoryMonitor
from kd_probe.io.tags import GROUPS
from tests.callbacks.conftest import RecordingLogger, trainer
from tests.callbacks.test_weight_trajectory import _Drift, _loader

STEPS = 12  # 4 epochs of 3 batches
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"


class _Failing(RecordingLogger):
    """Raises on the kd_probe metrics: on every call (``calls=None``) or on the listed calls only (1 = the first)."""

    def __init__(self, calls: set[int] | None = None) -> None:
        super().__init__()
        self.calls, self.seen = calls, 0

    @property
    def name(self) -> str:
        return "failing"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if any(key.split("/", 1)[0] in GROUPS for key in metrics):
            self.seen += 1
            if self.calls is None or self.seen in self.calls:
                raise ConnectionError("the metrics server went away")


def _refusing_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Logger:
    add_scalar = SummaryWriter.add_scalar

    def refuse(writer: SummaryWriter, tag: str, *args: Any, **kwargs: Any) -> Any:
        if tag.startswith("6_weights/"):
            raise OSError("disk full")
        return add_scalar(writer, tag, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", refuse)
    return TensorBoardLogger(tmp_path, name="run")


# (case, the failing logger, what the one warning says)
LOGGER_FAULTS: list[tuple[str, Callable[[Path, pytest.MonkeyPatch], Logger], str]] = [
    ("raises-always", lambda *_: _Failing(), r"logging scalars to _Failing: ConnectionError: the metrics server"),
    ("raises-twice", lambda *_: _Failing({2, 14}), r"logging scalars to _Failing: ConnectionError: the metrics server"),
    ("tensorboard-refuses", _refusing_tensorboard, r"logging scalars to TensorBoardLogger: ValueError"),
]


def _trained(monitor: pl.Callback | None, loggers: list[Logger], root: Path) -> tuple[pl.Trainer, _Drift]:
    module = _Drift(alternate=True)
    fit = trainer(root, max_epochs=4, callbacks=[] if monitor is None else [monitor], logger=loggers or False)
    fit.fit(module, train_dataloaders=_loader())
    return fit, module


@pytest.mark.parametrize(("case", "make", "message"), LOGGER_FAULTS, ids=[case[0] for case in LOGGER_FAULTS])
def test_a_logger_that_raises_is_warned_about_once_and_training_and_state_go_on(
    case: str, make: Callable[..., Logger], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, plain = _trained(None, [], tmp_path / "plain")
    reference, expected = WeightTrajectoryMonitor(), RecordingLogger()
    _trained(reference, [expected], tmp_path / "reference")
    monitor, recorder = WeightTrajectoryMonitor(), RecordingLogger()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit, module = _trained(monitor, [make(tmp_path, monkeypatch), recorder], tmp_path / "faulty")
    ours = [str(w.message) for w in caught if "WeightTrajectoryMonitor" in str(w.message)]
    assert len(ours) == 1 and re.search(message, ours[0]) and ours[0].endswith("training goes on (warned once)."), ours
    assert fit.state.finished and fit.global_step == STEPS
    for name, weight in plain.state_dict().items():  # the monitor, failing or not, leaves training bitwise unchanged
        assert torch.equal(weight, module.state_dict()[name]), name
    assert monitor.summary() == reference.summary()  # the state is whole
    assert recorder.values == expected.values  # and the other logger got every value


class _Frozen(pl.LightningModule):
    """``body`` trainable, ``teacher`` frozen, ``mixed`` half frozen (its first layer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.teacher = nn.Linear(4, 4), nn.Linear(4, 4)
        self.mixed = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
        self.teacher.requires_grad_(False)
        self.mixed[0].requires_grad_(False)

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        return self.mixed(self.body(batch[0]) + self.teacher(batch[0])).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


TEACHER = r"'teacher' \(all 2 parameters frozen\)"
MIXED = r"'mixed' \(2 of 4 parameters frozen: mixed\.0\.weight, mixed\.0\.bias\)"
# (case, arguments, tracked modules, how the skipped ones are said: "info"/"warning" and what it names)
FROZEN_CASES: list[tuple[str, dict[str, Any], set[str], str | None, list[str]]] = [
    ("default", {}, {"body", "mixed"}, "info", [TEACHER, MIXED]),
    ("named-frozen-module", {"modules": ["teacher", "body"]}, {"body"}, "warning", [TEACHER]),
    ("named-trainable-part", {"modules": ["mixed.1", "body"]}, {"mixed.1", "body"}, None, []),
    ("include-frozen", {"include_frozen": True}, {"body", "teacher", "mixed"}, None, []),
]


@pytest.mark.parametrize(
    ("case", "arguments", "tracked", "said", "named"), FROZEN_CASES, ids=[case[0] for case in FROZEN_CASES]
)
def test_frozen_parameters_are_skipped_and_named(
    case: str,
    arguments: dict[str, Any],
    tracked: set[str],
    said: str | None,
    named: list[str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monitor, recorder = WeightTrajectoryMonitor(**arguments), RecordingLogger()
    with caplog.at_level(logging.INFO, logger=RANK_ZERO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=2, callbacks=[monitor], logger=recorder).fit(
            _Frozen(), train_dataloaders=_loader(4)
        )
    infos = [r.getMessage() for r in caplog.records if "WeightTrajectoryMonitor: tracking only" in r.getMessage()]
    warned = [str(w.message) for w in caught if "WeightTrajectoryMonitor: tracking only" in str(w.message)]
    notes = {"info": infos, "warning": warned}
    assert len(infos) + len(warned) == (0 if said is None else 1), (infos, warned)
    for pattern in named:
        assert re.search(pattern, notes[str(said)][0]), notes
    assert set(monitor.summary()) == tracked
    assert {tag.split("/")[1] for tag in recorder.values} == tracked  # no tag for a skipped module


def test_a_half_frozen_module_moves_exactly_as_its_trainable_part(tmp_path: Path) -> None:
    whole, part = WeightTrajectoryMonitor(), WeightTrajectoryMonitor(modules=["mixed.1"])
    trainer(tmp_path, max_epochs=2, callbacks=[whole, part]).fit(_Frozen(), train_dataloaders=_loader(4))
    assert whole.summary()["mixed"] == part.summary()["mixed.1"]  # frozen weights do not dilute ‖W_0‖


@pytest.mark.parametrize(
    ("modules", "message"),
    [
        (["teacher"], r"`modules`=\['teacher'\]: every parameter of _Frozen's 'teacher' is frozen"),
        (["teacher", "mixed.0"], r"`modules`=\['teacher', 'mixed\.0'\]: every parameter of _Frozen's 'teacher', "),
    ],
)
def test_nothing_left_to_track_is_one_error_naming_the_modules(
    modules: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message + r".*nothing to track; .* `include_frozen=True`\.$"):
        trainer(tmp_path, callbacks=[WeightTrajectoryMonitor(modules=modules)]).fit(
            _Frozen(), train_dataloaders=_loader(4)
        )


@pytest.mark.parametrize("sized", [True, False], ids=["checkpoint", "older-checkpoint"])
def test_a_checkpoint_of_other_parameters_warns_and_starts_afresh(sized: bool, tmp_path: Path) -> None:
    before = WeightTrajectoryMonitor(include_frozen=True)  # like a checkpoint written before frozen were skipped
    trainer(tmp_path / "a", max_epochs=1, callbacks=[before]).fit(_Frozen(), train_dataloaders=_loader(4))
    state = before.state_dict()
    if not sized:
        state = {"tracks": {name: {k: v for k, v in t.items() if k != "size"} for name, t in state["tracks"].items()}}
    resumed, fresh = WeightTrajectoryMonitor(), WeightTrajectoryMonitor()
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match=r"checkpoint tracked 25 weights of 'mixed', now 5 are tracked") as caught:
        trainer(tmp_path / "b", max_epochs=2, callbacks=[resumed]).fit(_Frozen(), train_dataloaders=_loader(4))
    assert sum("checkpoint tracked" in str(w.message) for w in caught) == 1  # 'body' is the same: it goes on
    trainer(tmp_path / "c", max_epochs=2, callbacks=[fresh]).fit(_Frozen(), train_dataloaders=_loader(4))
    assert resumed.summary()["mixed"] == fresh.summary()["mixed"]
    assert resumed.summary()["body"]["distance"] != fresh.summary()["body"]["distance"]  # restored, not afresh


@pytest.mark.parametrize(
    ("precision", "expected"), [("bf16-true", "bf16-mixed"), ("16-true", "16-mixed"), ("64-true", "32-true")]
)
def test_a_precision_whose_weights_are_not_float32_is_refused_at_the_start_of_fit(
    precision: str, expected: str, tmp_path: Path
) -> None:
    monitor, module = WeightTrajectoryMonitor(), _Drift()
    start = module.lin.weight.detach().clone()
    message = (
        rf"Trainer\(precision='{precision}'\) keeps the weights in another type than float32; WeightTrajectoryMonitor "
        rf"computes in float32 and needs float32 weights: train with precision='{expected}'\."
    )
    with pytest.raises(ValueError, match=message):
        trainer(tmp_path, precision=precision, callbacks=[monitor]).fit(module, train_dataloaders=_loader())
    assert monitor.summary() == {}
    weight = module.lin.weight.detach()  # refused before any step (the weights only cast by Lightning)
    assert torch.equal(weight, start.to(weight.dtype))


def test_mixed_precision_is_tracked(tmp_path: Path) -> None:
    monitor = WeightTrajectoryMonitor()
    trainer(tmp_path, max_epochs=2, precision="bf16-mixed", callbacks=[monitor]).fit(
        _Drift(), train_dataloaders=_loader()
    )
    assert monitor.summary()["lin"]["update_cosine"] == pytest.approx([1.0])


@pytest.mark.slow
def test_under_ddp_a_logger_failing_on_rank_zero_does_not_stop_training(tmp_path: Path) -> None:
    module = _Drift()
    start = module.lin.weight.detach().clone()
    fit = trainer(
        tmp_path,
        max_epochs=2,
        callbacks=[WeightTrajectoryMonitor()],
        logger=_Failing(),
        strategy="ddp_spawn",
        devices=2,
    )
    fit.fit(module, train_dataloaders=_loader(batches=4))
    assert fit.state.finished
    # 2 optimizer steps an epoch, each −lr · d: the weights came back from the workers fully trained
    assert torch.allclose(module.lin.weight.detach(), start - 4 * 0.01 * module.direction, atol=1e-6)
