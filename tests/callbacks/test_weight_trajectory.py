import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_probe import WeightTrajectoryMonitor
from tests.callbacks.conftest import RecordingLogger as _Recorder
from tests.callbacks.conftest import trainer


class _Drift(pl.LightningModule):
    """A linear loss ``sign · ⟨W, d⟩``: plain SGD moves W by exactly ``−lr · sign · d`` every step."""

    direction: torch.Tensor  # d, a buffer

    def __init__(self, alternate: bool = False, size: int = 64, random_walk: bool = False) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(size, 1, bias=False)
        nn.init.normal_(self.lin.weight, std=0.1, generator=generator)  # the same start in every run
        self.register_buffer("direction", torch.randn(1, size, generator=generator))
        self.alternate, self.random_walk = alternate, random_walk

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        sign = -1.0 if self.alternate and self.current_epoch % 2 else 1.0
        direction = batch[0].mean(0, keepdim=True) if self.random_walk else self.direction
        return sign * (self.lin.weight * direction).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(size: int = 64, batches: int = 3) -> DataLoader:
    data = torch.randn(2 * batches, size, generator=torch.Generator().manual_seed(1))
    return DataLoader(TensorDataset(data), batch_size=2, shuffle=False)


def _fit(tmp_path: Path, module: _Drift, monitor: WeightTrajectoryMonitor, **kw: Any) -> _Recorder:
    recorder = _Recorder()
    options = dict(max_epochs=4, callbacks=[monitor], logger=recorder)
    options.update(kw)
    trainer(tmp_path, **options).fit(module, train_dataloaders=_loader(module.lin.in_features))
    return recorder


def test_a_fixed_direction_gives_cosine_one_and_a_straight_path(tmp_path: Path) -> None:
    module = _Drift()
    start = module.lin.weight.detach().clone()
    recorder = _fit(tmp_path, module, WeightTrajectoryMonitor())
    step = 0.01 * float(module.direction.norm()) / float(start.norm())
    assert recorder.series("6_weights/lin/step_length") == pytest.approx([step] * 12, rel=1e-5)
    assert recorder.series("6_weights/lin/distance") == pytest.approx([3 * step * e for e in (1, 2, 3, 4)], rel=1e-5)
    assert recorder.series("6_weights/lin/update_cosine") == pytest.approx([1.0] * 3)
    assert recorder.series("6_weights/lin/direction_consistency") == pytest.approx([1.0] * 4)
    assert recorder.series("6_weights/lin/final_alignment") == pytest.approx([1.0] * 4)
    assert [s for s, _ in recorder.values["6_weights/lin/final_alignment"]] == [3, 6, 9, 12]
    assert recorder.series("6_weights/lin/path_efficiency") == pytest.approx([1.0])


def test_alternating_directions_give_cosine_minus_one(tmp_path: Path) -> None:
    monitor = WeightTrajectoryMonitor()
    recorder = _fit(tmp_path, _Drift(alternate=True), monitor)
    assert recorder.series("6_weights/lin/update_cosine") == pytest.approx([-1.0] * 3)
    assert recorder.series("6_weights/lin/path_efficiency") == pytest.approx([0.0], abs=1e-6)
    assert monitor.summary()["lin"]["update_cosine"] == pytest.approx([-1.0] * 3)


def test_every_n_steps(tmp_path: Path) -> None:
    recorder = _fit(tmp_path, _Drift(), WeightTrajectoryMonitor(every_n_steps=4))
    assert [s for s, _ in recorder.values["6_weights/lin/step_length"]] == [4, 8, 12]


def test_a_projection_gives_the_exact_cosines_within_tolerance(tmp_path: Path) -> None:
    exact, sketched = WeightTrajectoryMonitor(), WeightTrajectoryMonitor(projection=2048)
    _fit(tmp_path / "a", _Drift(size=20_000, random_walk=True), exact)
    _fit(tmp_path / "b", _Drift(size=20_000, random_walk=True), sketched)
    a, b = exact.summary()["lin"], sketched.summary()["lin"]
    assert b["update_cosine"] == pytest.approx(a["update_cosine"], abs=0.1)  # stated tolerance: 0.1 at k = 2048
    assert b["final_alignment"] == pytest.approx(a["final_alignment"], abs=0.1)
    assert b["path_efficiency"] == pytest.approx(a["path_efficiency"], abs=0.1)


def test_resume_gives_the_uninterrupted_trajectory(tmp_path: Path) -> None:
    full = WeightTrajectoryMonitor()
    _fit(tmp_path / "full", _Drift(alternate=True), full)
    first = WeightTrajectoryMonitor()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(
        tmp_path / "a",
        _Drift(alternate=True),
        first,
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[first, checkpoints],
    )
    resumed = WeightTrajectoryMonitor()
    recorder = _Recorder()
    trainer(tmp_path / "b", max_epochs=4, callbacks=[resumed], logger=recorder, enable_checkpointing=True).fit(
        _Drift(alternate=True), train_dataloaders=_loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    a, b = full.summary()["lin"], resumed.summary()["lin"]
    assert b["update_cosine"] == pytest.approx(a["update_cosine"]) and b["distance"] == pytest.approx(a["distance"])
    assert math.isclose(b["path_efficiency"], a["path_efficiency"], abs_tol=1e-6)


def test_unknown_modules_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`modules`='lni' is not a module of _Drift; close matches: 'lin'"):
        _fit(tmp_path, _Drift(), WeightTrajectoryMonitor(modules=["lni"]))
    with pytest.raises(ValueError, match=r"`every_n_steps` must be an integer ≥ 1, got 0"):
        WeightTrajectoryMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match=r"`modules` must be a list of dotted module names, got 'lin'"):
        WeightTrajectoryMonitor(modules="lin")  # type: ignore[arg-type]


@pytest.mark.slow
def test_runs_under_ddp_with_rank_zero_computing(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path)
    trainer(
        tmp_path, max_epochs=2, callbacks=[WeightTrajectoryMonitor()], logger=logger, strategy="ddp_spawn", devices=2
    ).fit(_Drift(), train_dataloaders=_loader(batches=4))
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    assert "6_weights/lin/update_cosine" in header and "6_weights/lin/path_efficiency" in header
    # 4 batches over 2 ranks: 2 optimizer steps per epoch, each logged once
    column = header.index("6_weights/lin/step_length")
    steps = [line.split(",")[column] for line in text.splitlines()[1:]]
    assert sum(1 for value in steps if value) == 4
