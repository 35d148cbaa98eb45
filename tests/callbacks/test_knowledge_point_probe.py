import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from kd_probe import DistillationModule, KnowledgePointProbe
from kd_probe.core.render import knowledge_point_panels
from kd_probe.functional import downsample_mask, learning_speed, stability
from tests.callbacks.conftest import PROBE, loaders, tiny_data, tiny_net, trainer
from tests.callbacks.keyed_grids import assert_grids_decode_with_their_keys

TAGS = [
    "1_knowledge_points/n_fg",
    "1_knowledge_points/n_bg",
    "1_knowledge_points/fg_ratio",
    "1_knowledge_points/baseline_entropy",
    "7_sigma/reached_target_fraction",
    "7_sigma/effective_fraction",
]


def _events(folder: str) -> EventAccumulator:
    events = EventAccumulator(folder, size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    return events


def test_a_short_fit_logs_every_tag_with_an_epoch_0_probe_and_saves_the_history(tmp_path: Path) -> None:
    data = tiny_data()
    probe = KnowledgePointProbe(data, layer="features.bn2", log_images=2, **PROBE)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer(tmp_path, logger=logger, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
    events = _events(logger.log_dir)
    for tag in TAGS:
        assert [e.step for e in events.Scalars(tag)] == [0, 4, 8], tag
    assert [e.step for e in events.Images("1_knowledge_points/maps")] == [0, 4, 8]
    maps = events.Images("1_knowledge_points/maps")
    first = probe.history[0]
    shown = (probe.images[:2], first["entropy"][:2], first["points"][:2], probe.masks[:2])
    key = knowledge_point_panels(*shown).shape[1] - knowledge_point_panels(*shown, key=False).shape[1]
    assert maps[0].height == 20 + 2 * 16 * 4 + key and key > 0  # the column labels on two lines, 2 images, the key
    assert_grids_decode_with_their_keys(events)
    assert "1_knowledge_points/entropy_gap" in events.Tags()["histograms"]
    first = events.Scalars("1_knowledge_points/n_fg")[0].value
    assert first == pytest.approx(probe.history[0]["n_fg"].float().mean().item())
    saved = torch.load(Path(logger.log_dir) / "kd_probe_history.pt", weights_only=False)
    assert [(e["epoch"], e["global_step"]) for e in saved["entries"]] == [(0, 0), (1, 4), (2, 8)]
    entry = saved["entries"][0]
    assert entry["entropy"].shape == (6, 4, 4) and entry["points"].dtype == torch.bool
    assert entry["n_fg"].tolist() == (entry["points"] & saved["foreground"]).sum(dim=(1, 2)).tolist()


def test_named_probes_of_student_and_teacher_run_side_by_side(tmp_path: Path) -> None:
    data = tiny_data()
    student = KnowledgePointProbe(data, layer="features.bn2", epochs=[0, 2], **PROBE)
    teacher = KnowledgePointProbe(data, layer="features.bn1", module="teacher", name="teacher", epochs=[0], **PROBE)
    assert student.state_key != teacher.state_key
    logger = TensorBoardLogger(tmp_path, name="run")
    module = DistillationModule(tiny_net(), tiny_net())
    trainer(tmp_path, logger=logger, callbacks=[student, teacher]).fit(module, datamodule=data)
    tags = _events(logger.log_dir).Tags()
    assert "1_knowledge_points/teacher/n_fg" in tags["scalars"] and "1_knowledge_points/teacher/maps" in tags["images"]
    assert [e["epoch"] for e in student.history] == [0, 2] and [e["epoch"] for e in teacher.history] == [0]
    assert (Path(logger.log_dir) / "kd_probe_history_teacher.pt").exists()


def _history_equal(a: list[dict], b: list[dict]) -> None:
    assert [(e["epoch"], e["global_step"], e["failed"]) for e in a] == [
        (e["epoch"], e["global_step"], e["failed"]) for e in b
    ]
    for x, y in zip(a, b, strict=True):
        for key in ("entropy", "points", "n_fg", "n_bg", "sigma_f", "step"):
            assert torch.equal(x[key], y[key]), (x["epoch"], key)
        assert x["fg_ratio"] == y["fg_ratio"] or (math.isnan(x["fg_ratio"]) and math.isnan(y["fg_ratio"]))


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_history(tmp_path: Path) -> None:
    data = tiny_data()  # a constant learning rate: a 1-epoch run is then the start of a 3-epoch run
    full = KnowledgePointProbe(data, layer="features.bn2", **PROBE)
    trainer(tmp_path / "full", max_epochs=3, callbacks=[full]).fit(
        DistillationModule(tiny_net(), schedule=None), **loaders(data)
    )
    # the checkpoint is written on validation end, before the end-of-epoch probe: resume must catch it up
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = KnowledgePointProbe(data, layer="features.bn2", **PROBE)
    trainer(tmp_path / "a", max_epochs=1, callbacks=[first, checkpoints], enable_checkpointing=True).fit(
        DistillationModule(tiny_net(), schedule=None), **loaders(data)
    )
    resumed = KnowledgePointProbe(data, layer="features.bn2", **PROBE)
    trainer(tmp_path / "b", max_epochs=3, callbacks=[resumed], enable_checkpointing=True).fit(
        DistillationModule(tiny_net(), schedule=None), ckpt_path=tmp_path / "ckpt" / "last.ckpt", **loaders(data)
    )
    _history_equal(resumed.history, full.history)


def test_the_probe_does_not_change_training(tmp_path: Path) -> None:
    data = tiny_data()
    plain, probed = DistillationModule(tiny_net()), DistillationModule(tiny_net())
    torch.manual_seed(7)
    trainer(tmp_path / "a").fit(plain, datamodule=data)
    torch.manual_seed(7)
    trainer(tmp_path / "b", callbacks=[KnowledgePointProbe(data, layer="features.bn2", **PROBE)]).fit(
        probed, datamodule=data
    )
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


class _PlainModule(pl.LightningModule):
    """Not a DistillationModule: the probe finds the network by attribute path."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple, _: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(("module", "layer"), [("net", "0"), (None, "net.0")])
def test_works_with_any_lightning_module(tmp_path: Path, module: str | None, layer: str) -> None:
    data = tiny_data()
    probe = KnowledgePointProbe(data, layer=layer, module=module, epochs=[0, 1], **PROBE)
    trainer(tmp_path, max_epochs=1, callbacks=[probe], logger=CSVLogger(tmp_path)).fit(
        _PlainModule(), train_dataloaders=loaders(data)["train_dataloaders"]
    )
    assert [e["epoch"] for e in probe.history] == [0, 1] and probe.history[1]["failed"] is None
    assert "1_knowledge_points/n_fg" in (Path(tmp_path) / "lightning_logs" / "version_0" / "metrics.csv").read_text()


class _BreakWeights(pl.Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.student.features.conv1.weight.fill_(math.nan)


def test_a_failing_probe_warns_and_is_marked_without_stopping_training(tmp_path: Path) -> None:
    data = tiny_data()
    probe = KnowledgePointProbe(data, layer="features.bn2", **PROBE)
    fit_trainer = trainer(tmp_path, max_epochs=3, callbacks=[_BreakWeights(), probe])
    with pytest.warns(
        UserWarning, match=r"probe at epoch 2 failed \(FloatingPointError: the feature at `layer`='features.bn2' is NaN"
    ):
        fit_trainer.fit(DistillationModule(tiny_net()), datamodule=data)
    assert fit_trainer.current_epoch == 3
    assert [e["failed"] is None for e in probe.history] == [True, True, False, False]
    assert probe.history[1]["entropy"].isfinite().all()


def test_fast_dev_run_skips_probing(tmp_path: Path) -> None:
    data = tiny_data()
    probe = KnowledgePointProbe(data, layer="features.bn2", **PROBE)
    trainer(tmp_path, fast_dev_run=True, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
    assert probe.history == []


def test_state_dict_round_trip_skips_epochs_already_probed(tmp_path: Path) -> None:
    data = tiny_data()
    first = KnowledgePointProbe(data, layer="features.bn2", epochs=[0], **PROBE)
    trainer(tmp_path, max_epochs=1, callbacks=[first]).fit(DistillationModule(tiny_net()), datamodule=data)
    again = KnowledgePointProbe(data, layer="features.bn2", epochs=[0], **PROBE)
    again.load_state_dict(first.state_dict())
    trainer(tmp_path, max_epochs=1, callbacks=[again]).fit(DistillationModule(tiny_net()), datamodule=data)
    assert len(again.history) == 1


def _images_and_masks() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(4, 3, 16, 16), torch.ones(4, 16, 16)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((torch.randn(4, 3, 16, 16),), {}, r"`masks` are required"),
        (
            (torch.randn(4, 3, 16, 16), torch.ones(3, 16, 16)),
            {},
            r"`masks` of shape \(3, 16, 16\) do not match `images` of shape \(4, 3, 16, 16\)",
        ),
        ((torch.randn(4, 3, 16, 16), torch.ones(4, 8, 8)), {}, r"`masks` of shape \(4, 8, 8\) do not match"),
        ((torch.zeros(0, 3, 16, 16), torch.ones(0, 16, 16)), {}, r"`images` is empty"),
        (
            (torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.ones(4, 16, 16)),
            {},
            r"`images` must be a 4-D float tensor",
        ),
        (_images_and_masks(), {"sample": 3}, r"unknown σ options \['sample'\]"),
        (_images_and_masks(), {"epochs": [1], "every_n_epochs": 2}, r"Give `epochs` or `every_n_epochs`, not both"),
        (_images_and_masks(), {"epochs": "often"}, r"`epochs` must be a list of epochs or 'paper', got 'often'"),
        (_images_and_masks(), {"threshold": math.nan}, r"`threshold` must be a finite number of nats"),
        (_images_and_masks(), {"grid": 32}, r"`grid`=32 must be between 1 and the probe images' size 16×16"),
    ],
)
def test_bad_input_is_refused_at_construction(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KnowledgePointProbe(*args, layer="features.bn2", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "trainer_kwargs", "message"),
    [
        (
            {"layer": "features.bnn2"},
            {},
            r"`layer`='features.bnn2' is not a module of VGG; close matches: 'features.bn2'",
        ),
        (
            {"layer": "features.bn2", "module": "studnt"},
            {},
            r"`module`='studnt' is not an attribute path of DistillationModule",
        ),
        (
            {"layer": "features.bn2", "epochs": "paper"},
            {"max_epochs": -1, "max_steps": 2},
            r"`epochs='paper'` .* needs Trainer\(max_epochs=...\)",
        ),
    ],
)
def test_bad_input_is_refused_at_setup(tmp_path: Path, kwargs: dict, trainer_kwargs: dict, message: str) -> None:
    data = tiny_data()
    probe = KnowledgePointProbe(data, **{**PROBE, **kwargs})
    with pytest.raises(ValueError, match=message):
        trainer(tmp_path, callbacks=[probe], **trainer_kwargs).fit(DistillationModule(tiny_net()), datamodule=data)
    assert probe.history == []


SECANT = dict(method="secant", grid=4, samples=8, passes=2)


def _fit_for_history(folder: Path, sigma: dict | None = None, **trainer_kwargs: object) -> dict:
    data = tiny_data()
    probe = KnowledgePointProbe(data, layer="features.conv2", **(sigma or PROBE))
    module = DistillationModule(tiny_net(batch_norm=False), lr=1e-30)  # updates far below one ulp: weights fixed
    trainer(folder, callbacks=[probe], logger=CSVLogger(folder), **trainer_kwargs).fit(module, datamodule=data)
    return torch.load(folder / "lightning_logs" / "version_0" / "kd_probe_history.pt", weights_only=False)


def test_a_secant_probe_records_its_method_in_the_history_and_the_summary(tmp_path: Path) -> None:
    history = _fit_for_history(tmp_path, SECANT)
    assert [e["method"] for e in history["entries"]] == ["secant"] * 3 and not any(
        e["failed"] for e in history["entries"]
    )
    assert history["settings"]["method"] == "secant" and history["settings"]["passes"] == 2
    summary = json.loads((tmp_path / "lightning_logs" / "version_0" / "kd_probe_summary.json").read_text())
    assert summary["settings"]["method"] == "secant"
    assert _fit_for_history(tmp_path / "faithful")["settings"]["method"] == "faithful"  # recorded when defaulted


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [PROBE, SECANT], ids=["faithful", "secant"])
def test_ddp_on_two_processes_gives_the_single_process_history(tmp_path: Path, sigma: dict) -> None:
    single = _fit_for_history(tmp_path / "single", sigma)
    ddp = _fit_for_history(tmp_path / "ddp", sigma, strategy="ddp_spawn", devices=2)
    assert [e["epoch"] for e in ddp["entries"]] == [0, 1, 2]
    assert [e["global_step"] for e in ddp["entries"]] == [0, 2, 4]  # two processes: half the batches each
    for a, b in zip(ddp["entries"], single["entries"], strict=True):  # global steps differ: half the batches
        for key in ("entropy", "points", "n_fg", "n_bg", "sigma_f", "step", "effective"):
            assert torch.equal(a[key], b[key]), (a["epoch"], key)


class _ConvDrift(pl.LightningModule):
    """Plain SGD on the linear loss ⟨W, D⟩ moves the conv weight by exactly −lr·D per step."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU())
        self.register_buffer("drift", torch.randn(2, 3, 3, 3, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple, _: int) -> torch.Tensor:
        return (self.net[0].weight * self.drift).sum() + 0.0 * batch[0].sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_path_length_tracks_the_nearest_weight_and_feeds_the_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tiny_data()
    module = _ConvDrift()
    start = module.net[0].weight.detach().clone()
    probe = KnowledgePointProbe(data, layer="net.1", **PROBE)  # a ReLU: tracks net.0
    logger = TensorBoardLogger(tmp_path, name="run")
    with caplog.at_level("INFO", logger="lightning.pytorch.utilities.rank_zero"):
        trainer(tmp_path, max_epochs=2, callbacks=[probe], logger=logger).fit(
            module, train_dataloaders=loaders(data)["train_dataloaders"]
        )
    assert (
        "`net.1` (ReLU) has no weight; the path length D tracks the weight of `net.0`, the last convolution"
        in caplog.text
    )
    step = 0.01 * float(module.drift.norm()) / float(start.norm())
    assert [e["distance"] for e in probe.history] == pytest.approx([0.0, 4 * step, 8 * step], rel=1e-5)
    summary = json.loads((Path(logger.log_dir) / "kd_probe_summary.json").read_text())
    assert summary["weight_layer"] == "net.0" and summary["layer"] == "net.1"
    assert [c["epoch"] for c in summary["checkpoints"]] == [0, 1, 2]
    n_fg = torch.stack([e["n_fg"] for e in probe.history])
    d_mean, d_std, d_var = learning_speed(n_fg, torch.tensor([e["distance"] for e in probe.history]))
    assert (summary["d_mean"], summary["d_std"], summary["d_var"]) == pytest.approx((d_mean, d_std, d_var))
    foreground = downsample_mask(probe.masks, 4)
    points = torch.stack([e["points"] for e in probe.history])
    assert summary["rho"] == pytest.approx(stability(points, foreground))
    assert summary["rho_all"] == pytest.approx(stability(points))
    assert summary["n_fg"] == pytest.approx(probe.history[-1]["n_fg"].float().mean().item())
    tags = _events(logger.log_dir).Tags()["scalars"]
    for tag in ("d_mean", "d_std", "rho", "rho_all", "weight_distance"):
        assert f"2_learning_stability/{tag}" in tags


class _Crash(pl.Callback):
    """Training dies after ``epoch`` epochs (after the probe of that epoch)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            raise RuntimeError("the machine went away")


def test_a_run_that_dies_keeps_a_summary_up_to_its_last_probe_marked_unfinished(tmp_path: Path) -> None:
    data = tiny_data()
    probe = KnowledgePointProbe(data, layer="features.bn2", **PROBE)
    logger = TensorBoardLogger(tmp_path, name="run", version="")
    fit = trainer(tmp_path, max_epochs=3, logger=logger, callbacks=[probe, _Crash(2)])
    with pytest.raises(RuntimeError, match="the machine went away"):
        fit.fit(DistillationModule(tiny_net()), datamodule=data)
    summary = json.loads((tmp_path / "run" / "kd_probe_summary.json").read_text())
    assert summary["finished"] is False
    assert [c["epoch"] for c in summary["checkpoints"]] == [0, 1, 2]
    assert summary["n_fg"] == pytest.approx(float(probe.history[-1]["n_fg"].float().mean()))
    done = trainer(tmp_path / "b", max_epochs=1, logger=TensorBoardLogger(tmp_path, name="b", version=""))
    done.callbacks.append(KnowledgePointProbe(data, layer="features.bn2", **PROBE))
    done.fit(DistillationModule(tiny_net()), datamodule=data)
    assert json.loads((tmp_path / "b" / "kd_probe_summary.json").read_text())["finished"] is True


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"threshold": 0.3}, "threshold=0.2, this probe has threshold=0.3"),
        ({"samples": 5}, "samples=4, this probe has samples=5"),
        ({"method": "secant"}, "method='faithful', this probe has method='secant'"),
        ({"seed": 1}, "seed='not set', this probe has seed=1"),
        ({"layer": "features.bn1"}, "layer='features.bn2', this probe has layer='features.bn1'"),
        ({"probe_size": 6}, "probe_set="),
    ],
)
def test_resuming_with_changed_settings_is_refused_naming_both_values(tmp_path: Path, change: dict, named: str) -> None:
    data = tiny_data()
    first = KnowledgePointProbe(data, layer="features.bn2", **PROBE)
    trainer(tmp_path / "a", max_epochs=1, callbacks=[first]).fit(DistillationModule(tiny_net()), datamodule=data)
    options = {**PROBE, "layer": "features.bn2", **change}
    other_data = options.pop("probe_size", None)
    source = data if other_data is None else _other_probe_set(data)
    changed = (
        KnowledgePointProbe(*source, **options) if isinstance(source, tuple) else KnowledgePointProbe(source, **options)
    )
    with pytest.raises(ValueError) as refused:
        changed.load_state_dict(first.state_dict())
    message = str(refused.value)
    assert message.startswith("KnowledgePointProbe: the checkpoint's history was probed with ") and named in message
    assert message.endswith("resume with the same settings, or give this probe another `name` to start a new history.")
    assert changed.history == []
    same = KnowledgePointProbe(data, layer="features.bn2", **PROBE)
    same.load_state_dict(first.state_dict())
    assert len(same.history) == len(first.history)


def _other_probe_set(data: object) -> tuple[torch.Tensor, torch.Tensor]:
    images, _, masks = (torch.stack(parts) for parts in zip(*[data.probe_set[i] for i in range(3)], strict=True))  # type: ignore[attr-defined]
    return images, masks


@pytest.mark.parametrize("sigma", [PROBE, SECANT], ids=["faithful", "secant"])
def test_a_probe_set_streamed_to_the_device_in_chunks_gives_the_same_history(
    tmp_path: Path, sigma: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 32: the probe images go to the device ``STREAM`` at a time; chunks of 3 give the one-chunk history."""
    whole = _fit_for_history(tmp_path / "whole", sigma)
    from kd_probe.callbacks import _streaming

    monkeypatch.setattr(_streaming, "STREAM", 3)
    streamed = _fit_for_history(tmp_path / "streamed", sigma)
    for a, b in zip(streamed["entries"], whole["entries"], strict=True):
        for key in ("entropy", "points", "n_fg", "n_bg", "sigma_f", "step", "effective"):
            assert torch.equal(a[key], b[key]), (a["epoch"], key)
