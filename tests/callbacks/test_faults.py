"""Faults around the probes (issue 13): a probe problem never stops training, never loses or doubles history."""

import logging
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, UniCAMProbe
from kd_probe.callbacks import knowledge_points
from kd_probe.core.render import as_rgb, map_rows
from kd_probe.io.tags import GROUPS
from kd_probe.models import VGG
from tests.callbacks.conftest import PROBE, tiny_data, tiny_net, trainer
from tests.callbacks.keyed_grids import assert_grids_decode_with_their_keys

KINDS = ("knowledge_points", "agreement", "unicam")
FILES = {"knowledge_points": "kd_probe_history.pt", "unicam": "kd_probe_unicam.pt"}
REPO = Path(__file__).resolve().parents[2]


def _probe(kind: str, images: Any = None, *extra: Any, **kwargs: Any) -> Any:
    source = tiny_data() if images is None else images
    if kind == "knowledge_points":
        return KnowledgePointProbe(source, *extra, layer="features.bn2", **{**PROBE, **kwargs})
    if kind == "agreement":
        layers = {"teacher_layer": "features.relu2", "student_layer": "features.relu2"}
        return AgreementProbe(source, *extra, transforms=("shift",), **{**layers, **kwargs})
    return UniCAMProbe(source, *extra, layers=["features.relu2"], cam_layer="features.relu2", **kwargs)


class _RecordingLogger(Logger):
    """A logger with a chosen folder, that can refuse to log (``fail=True``); picklable for ddp_spawn."""

    def __init__(self, folder: Path, fail: bool = False) -> None:
        super().__init__()
        self.folder, self.fail = folder, fail
        self.logged: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @property
    def log_dir(self) -> str:
        return str(self.folder)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.fail and any(key.split("/", 1)[0] in GROUPS for key in metrics):
            raise ConnectionError("the metrics server went away")
        self.logged.append((step, metrics))

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass


def _fit(probe: pl.Callback, logger: Any, max_epochs: int = 1, **kwargs: Any) -> pl.Trainer:
    fit_trainer = trainer(Path.cwd(), max_epochs=max_epochs, logger=logger, callbacks=[probe], **kwargs)
    fit_trainer.fit(DistillationModule(tiny_net(), tiny_net()), datamodule=tiny_data())
    return fit_trainer


def _one_entry_per_epoch(probe: Any, epochs: int) -> None:
    assert [entry["epoch"] for entry in probe.history] == list(range(epochs + 1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["../../x", "a/b", "", ".."])
def test_a_name_that_is_not_one_safe_path_component_is_refused(kind: str, name: str) -> None:
    with pytest.raises(ValueError, match=r"`name` must be one safe path component .* got"):
        _probe(kind, name=name)


@pytest.mark.parametrize("kind", KINDS)
def test_a_logger_that_raises_neither_stops_training_nor_doubles_the_history(kind: str, tmp_path: Path) -> None:
    probe = _probe(kind)
    with pytest.warns(UserWarning, match=r"logging scalars to _RecordingLogger: ConnectionError: the metrics server"):
        fit_trainer = _fit(probe, _RecordingLogger(tmp_path / "run", fail=True))
    assert fit_trainer.state.finished and fit_trainer.current_epoch == 1
    _one_entry_per_epoch(probe, 1)
    for entry in probe.history:
        assert entry.get("failed") is None
        assert entry["problems"] == [
            "logging scalars to _RecordingLogger: ConnectionError: the metrics server went away"
        ]
    if kind in FILES:  # the file is written after the logging: it holds the problems, as plain strings
        saved = torch.load(tmp_path / "run" / FILES[kind], weights_only=True)
        assert [entry["problems"] for entry in saved["entries"]] == [entry["problems"] for entry in probe.history]


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_grid_tensorboard_refuses_is_warned_about_once_and_noted(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ValueError("image too large")

    monkeypatch.setattr(SummaryWriter, "add_image", refuse)
    probe = _probe(kind)
    with pytest.warns(UserWarning, match=r"writing the .* to TensorBoard: ValueError: image too large") as caught:
        fit_trainer = _fit(probe, TensorBoardLogger(tmp_path, name="run"), max_epochs=2)
    assert fit_trainer.state.finished
    assert sum("image too large" in str(w.message) for w in caught) == 1  # once per kind of problem
    _one_entry_per_epoch(probe, 2)
    assert all(entry.get("failed") is None and entry["problems"] for entry in probe.history)


@pytest.mark.parametrize("kind", ["knowledge_points", "unicam"])
@pytest.mark.parametrize("fault", ["history_file_is_a_folder", "log_folder_cannot_be_created"])
def test_a_file_that_cannot_be_written_is_warned_about_and_the_state_keeps_the_history(
    kind: str, fault: str, tmp_path: Path
) -> None:
    if fault == "history_file_is_a_folder":
        folder = tmp_path / "run"
        (folder / FILES[kind]).mkdir(parents=True)  # the rename onto it fails
    else:  # like a full or read-only disk: the folder cannot be made, its parent is a file
        (tmp_path / "file").write_text("not a folder")
        folder = tmp_path / "file" / "run"
    probe = _probe(kind)
    with pytest.warns(
        UserWarning, match=rf"saving {FILES[kind]}: (IsADirectoryError|NotADirectoryError|FileExistsError)"
    ):
        fit_trainer = _fit(probe, _RecordingLogger(folder), max_epochs=2)
    assert fit_trainer.state.finished
    _one_entry_per_epoch(probe, 2)
    assert all(entry.get("failed") is None for entry in probe.history)
    assert all(entry["problems"][0].startswith(f"saving {FILES[kind]}") for entry in probe.history)
    restored = _probe(kind)  # the callback state (what goes into checkpoints) holds the whole history
    restored.load_state_dict(probe.state_dict())
    assert len(restored.history) == 3


class _Diverge(pl.Callback):
    """Sets the student's first convolution to NaN (or infinity) after the first epoch: a diverged model."""

    def __init__(self, value: float) -> None:
        self.value = value

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.student.features.conv1.weight.fill_(self.value)  # type: ignore[union-attr, operator]


@pytest.mark.parametrize("kind", ["agreement", "unicam"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_diverged_model_gives_failed_entries_with_the_reason_never_numbers(
    kind: str, value: float, tmp_path: Path
) -> None:
    probe = _probe(kind)
    fit_trainer = trainer(tmp_path, max_epochs=3, callbacks=[_Diverge(value), probe])
    with pytest.warns(UserWarning, match=r"probe at epoch 2 failed \(FloatingPointError: .*(NaN|infinite)"):
        fit_trainer.fit(DistillationModule(tiny_net(), tiny_net()), datamodule=tiny_data())
    assert fit_trainer.current_epoch == 3
    _one_entry_per_epoch(probe, 3)
    assert [entry.get("failed") is None for entry in probe.history] == [True, True, False, False]
    for entry in probe.history[2:]:
        assert entry["failed"].startswith("FloatingPointError") and set(entry) == {"epoch", "global_step", "failed"}


def _channels_data(channels: int) -> tuple[DataLoader, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The tiny data with 1 (grey) or 4 channels: train loader, probe images, labels and masks."""
    data = tiny_data()

    def convert(images: torch.Tensor) -> torch.Tensor:
        grey = images.mean(dim=1, keepdim=True)
        return grey if channels == 1 else torch.cat([images, grey], dim=1)

    train = [data.train_set[i] for i in range(len(data.train_set))]
    images = convert(torch.stack([item[0] for item in train]))
    loader = DataLoader(TensorDataset(images, torch.tensor([int(item[1]) for item in train])), batch_size=16)
    probe = [data.probe_set[i] for i in range(len(data.probe_set))]
    probe_images = convert(torch.stack([item[0] for item in probe]))
    labels = torch.tensor([int(item[1]) for item in probe])
    return loader, probe_images, labels, torch.stack([torch.as_tensor(item[2]) for item in probe])


@pytest.mark.parametrize("channels", [1, 4])
def test_grey_and_four_channel_images_are_drawn_by_every_probe(channels: int, tmp_path: Path) -> None:
    loader, images, labels, masks = _channels_data(channels)
    probes = [
        _probe("knowledge_points", images, masks, log_images=2),
        _probe("agreement", images, labels, log_images=2),
        _probe("unicam", images, labels, log_images=2),
    ]
    logger = TensorBoardLogger(tmp_path, name="run")
    torch.manual_seed(0)
    student, teacher = (
        VGG(3, in_channels=channels, widths=(4, 8), convs_per_stage=1),
        VGG(3, in_channels=channels, widths=(4, 8), convs_per_stage=1),
    )
    trainer(tmp_path, max_epochs=1, logger=logger, callbacks=probes).fit(
        DistillationModule(student, teacher), train_dataloaders=loader
    )
    for probe in probes:
        _one_entry_per_epoch(probe, 1)
        assert all(entry.get("failed") is None and "problems" not in entry for entry in probe.history)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    for tag in ("1_knowledge_points/maps", "3_agreement/cams", "4_unicam/distilled", "4_unicam/residual"):
        assert len(events.Images(tag)) == 2, tag
    assert_grids_decode_with_their_keys(events)


def test_as_rgb_shows_grey_as_grey_and_drops_extra_channels() -> None:
    grey = torch.rand(2, 1, 4, 4)
    assert torch.equal(as_rgb(grey), grey.expand(-1, 3, -1, -1))
    four = torch.rand(2, 4, 4, 4)
    assert torch.equal(as_rgb(four), four[:, :3])
    picture = map_rows(grey, [torch.rand(2, 4, 4)], scale=1, key=False)
    assert picture.shape == (3, 8, 8) and torch.equal(picture[0, :4, :4], grey[0, 0])  # grey: R = G = B = input
    with pytest.raises(ValueError, match=r"`pictures` must be \[N, C, H, W\] with C ≥ 1, got shape \(4, 4\)"):
        as_rgb(torch.rand(4, 4))


@pytest.mark.parametrize("kind", KINDS)
def test_the_expected_cost_is_logged_with_its_numbers(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    details = {
        "knowledge_points": r"6 images, faithful, 4 samples × 25 steps",
        "agreement": r"6 images: a student Grad-CAM and 6 forward passes each",  # clean, 4 ε, 1 transform
        "unicam": r"6 images: a student forward and two UniCAM passes",
    }
    owner = {"knowledge_points": "KnowledgePointProbe", "agreement": "AgreementProbe", "unicam": "UniCAMProbe"}[kind]
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        _fit(_probe(kind), False)
    text = caplog.text
    assert len(re.findall(rf"{owner}: about [0-9.e-]+ s per probe \({details[kind]}\)\.", text)) == 1
    assert re.search(rf"{owner}: a probe costs about [0-9.e-]+ s, \d+% of a training epoch", text)


@pytest.mark.parametrize("epoch_known", [True, False])
def test_a_probe_costlier_than_a_training_epoch_warns_once_with_the_knobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch_known: bool
) -> None:
    if not epoch_known:  # no estimate of an epoch before it runs: the warning comes after the first epoch
        monkeypatch.setattr(knowledge_points, "estimated_epoch", lambda *_: None)
    probe = _probe("knowledge_points", samples=16, steps=120)
    said = (
        r"expected to take about .* settings that fit: "
        if epoch_known
        else r"more than a training epoch .* fewer `samples` or `steps`"
    )
    with pytest.warns(UserWarning, match=said) as caught:
        _fit(probe, False, max_epochs=2, limit_train_batches=1, limit_val_batches=0)
    assert sum("KnowledgePointProbe: a probe" in str(w.message) for w in caught) == 1  # once in all


@pytest.mark.parametrize("kind", ["agreement", "unicam"])
def test_max_batch_gives_the_same_values(kind: str, tmp_path: Path) -> None:
    whole, chunked = _probe(kind), _probe(kind, max_batch=2)
    _fit(whole, False)
    _fit(chunked, False)
    for a, b in zip(whole.history, chunked.history, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key == "per_image":  # the agreement probe's per-image values
                assert a[key].keys() == b[key].keys()
                for name, values in a[key].items():
                    assert torch.allclose(values.float(), b[key][name].float(), atol=1e-5, equal_nan=True), name
            else:
                assert a[key] == pytest.approx(b[key], abs=1e-5, nan_ok=True), key
    with pytest.raises(ValueError, match=r"`max_batch` must be None or an integer ≥ 1 \(images per pass\), got 0"):
        _probe(kind, max_batch=0)


@pytest.mark.slow
def test_under_ddp_a_logger_failing_on_rank_zero_does_not_take_the_other_rank_down(tmp_path: Path) -> None:
    probes = [_probe("knowledge_points", every_n_epochs=1), _probe("unicam")]
    logger = _RecordingLogger(tmp_path / "run", fail=True)
    fit_trainer = trainer(tmp_path, max_epochs=2, logger=logger, callbacks=probes, strategy="ddp_spawn", devices=2)
    fit_trainer.fit(DistillationModule(tiny_net(), tiny_net()), datamodule=tiny_data())
    assert fit_trainer.state.finished
    for name in FILES.values():
        saved = torch.load(tmp_path / "run" / name, weights_only=True)
        assert [entry["epoch"] for entry in saved["entries"]] == [0, 1, 2], name
        assert all(entry.get("failed") is None and len(entry["problems"]) >= 1 for entry in saved["entries"]), name


_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader
    from kd_probe import DistillationModule, KnowledgePointProbe
    from tests.callbacks.conftest import tiny_data, tiny_net, trainer

    mode, root = sys.argv[1], Path(sys.argv[2])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C works even if started with &
    data = tiny_data()
    loaders = dict(
        train_dataloaders=DataLoader(data.train_set, batch_size=16, shuffle=False),
        val_dataloaders=DataLoader(data.val_set, batch_size=16, shuffle=False),
    )
    record = {}

    class Probe(KnowledgePointProbe):
        def probe(self, trainer, pl_module, epoch):
            if epoch == 2 and mode == "killed":
                (root / "probing").write_text("2")
                time.sleep(60)  # killed here, while the probe runs
            if epoch == 1 and mode in ("sigterm", "sigint"):
                self.sigma_options["steps"] = 100000  # minutes of work, unless the signal stops it
                self.sigma_options["patience"] = None  # no early stop: every step runs
                number = signal.SIGTERM if mode == "sigterm" else signal.SIGINT
                def send():
                    record["sent"] = time.perf_counter()
                    os.kill(os.getpid(), number)
                threading.Timer(1.0, send).start()
            return super().probe(trainer, pl_module, epoch)

    class Witness(pl.Callback):
        def on_exception(self, trainer, pl_module, exception):
            record["on_exception"] = type(exception).__name__

    probe = Probe(data, layer="features.bn2", grid=4, samples=4, steps=25)
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_epochs=1)
    fit = trainer(root, max_epochs=3, callbacks=[probe, checkpoints, Witness()], enable_checkpointing=True)
    try:
        fit.fit(
            DistillationModule(tiny_net(), schedule=None),
            ckpt_path=sys.argv[3] if mode == "resume" else None,
            **loaders,
        )
    except BaseException as error:
        record["raised"] = type(error).__name__
    record["stopped_after"] = time.perf_counter() - record.get("sent", time.perf_counter())
    record["status"] = str(fit.state.status.value)
    record["interrupted"] = fit.interrupted
    record["epochs"] = [entry["epoch"] for entry in probe.history]
    (root / "record.json").write_text(json.dumps(record))
    """
)


def _child(mode: str, root: Path, *args: str, wait: bool = True) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode, str(root), *args],
        cwd=root,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if wait:
        output = process.communicate(timeout=300)[0].decode()
        assert (root / "record.json").exists(), output[-3000:]
    return process


def _record(root: Path) -> dict:
    import json

    return json.loads((root / "record.json").read_text())


def _every_file_loads(root: Path) -> int:
    loaded = 0
    for path in root.rglob("*.pt"):
        torch.load(path, weights_only=True)
        loaded += 1
    for path in root.rglob("*.ckpt"):
        torch.load(path, weights_only=False)  # Lightning's own checkpoints: just whole
        loaded += 1
    return loaded


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sigterm", "sigint"])
def test_sigterm_or_ctrl_c_during_a_long_probe_stops_it_within_seconds(mode: str, tmp_path: Path) -> None:
    _child(mode, tmp_path)
    record = _record(tmp_path)
    assert record["stopped_after"] < 5, record  # the probe alone would run for minutes
    assert record["status"] == "interrupted" and record["interrupted"], record
    assert record["on_exception"] == ("SIGTERMException" if mode == "sigterm" else "KeyboardInterrupt"), record
    assert record["raised"] == ("SIGTERMException" if mode == "sigterm" else "SystemExit"), record
    assert record["epochs"] == [0], record  # the interrupted probe left no entry, nothing half-written
    assert _every_file_loads(tmp_path) >= 1
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_sigkill_during_a_probe_then_resume_gives_the_uninterrupted_history(tmp_path: Path) -> None:
    killed = _child("killed", tmp_path / "killed", wait=False)
    marker = tmp_path / "killed" / "probing"
    deadline = time.monotonic() + 240
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), killed.communicate()[0].decode()[-3000:]
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert _every_file_loads(tmp_path / "killed") >= 2
    _child("full", tmp_path / "full")
    _child("resume", tmp_path / "resume", str(tmp_path / "killed" / "ckpt" / "last.ckpt"))
    full = torch.load(tmp_path / "full" / "kd_probe_history.pt", weights_only=True)["entries"]
    resumed = torch.load(tmp_path / "resume" / "kd_probe_history.pt", weights_only=True)["entries"]
    assert [e["epoch"] for e in resumed] == [e["epoch"] for e in full] == [0, 1, 2, 3]
    for a, b in zip(resumed, full, strict=True):
        assert (a["global_step"], a["failed"]) == (b["global_step"], b["failed"])
        for key in ("entropy", "points", "n_fg", "n_bg", "sigma_f", "step"):
            assert torch.equal(a[key], b[key]), (a["epoch"], key)
