"""Issue 32: ``AgreementProbe`` shares its images out over the DDP ranks and gathers their values, so that a
two-process run records what one process records; a failure on one rank fails the probe on every rank."""

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_probe import AgreementProbe, DistillationModule, ShapesDataModule
from kd_probe.callbacks._base import BatchProbe
from kd_probe.models import VGG
from tests.callbacks.conftest import trainer


def odd_data() -> ShapesDataModule:
    """Five probe images: two processes get unequal shares (images 0, 2, 4 and 1, 3)."""
    return ShapesDataModule(
        num_classes=3, image_size=16, train_size=64, val_size=16, test_size=16, probe_size=5, batch_size=16
    )


def net(seed: int) -> VGG:
    torch.manual_seed(seed)
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1, batch_norm=False)  # no statistics to drift


def fixed_module() -> DistillationModule:
    """A student that is not its teacher, whose weights stay fixed (updates far below one ulp), so that every
    probe of a one-process and a two-process run sees the same networks whatever batches each process trains on."""
    return DistillationModule(net(1), net(0), lr=1e-30)


class BreakOnRankOne(pl.Callback):
    """Fills the student's first convolution with NaN on rank 1 only, at the end of epoch ``epoch`` (before the
    probe of that epoch's end when placed before the probe): the probe fails there and nowhere else."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 1 and trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.student.features.conv1.weight.fill_(float("nan"))


class RankHistories(pl.Callback):
    """Writes each rank's probe history as ``rank<r>.json`` (epoch and failure of each entry) at the end of fit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        probe = next(c for c in trainer.callbacks if isinstance(c, BatchProbe))  # type: ignore[attr-defined]
        history = [[entry["epoch"], entry.get("failed")] for entry in probe.history]
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(history))


def fit(folder: Path, *probes: BatchProbe, **options: Any) -> Path:
    """Two epochs with ``probes`` after a rank-one breaker (the first probe's histories written per rank); the run
    folder."""
    folder.mkdir(parents=True)
    logger = TensorBoardLogger(folder, name="run", version=0)
    callbacks = [BreakOnRankOne(epoch=1), *probes, RankHistories(folder)]
    trainer(folder, max_epochs=2, logger=logger, callbacks=callbacks, **options).fit(
        fixed_module(), datamodule=odd_data()
    )
    return folder / "run" / "version_0"


def scalars(run: Path, tag: str) -> list[float]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def assert_same(ddp: Any, single: Any, where: str) -> None:
    """Equal bit for bit (NaN where NaN), through dictionaries and lists: tensors, floats and everything else."""
    if isinstance(single, dict):
        assert ddp.keys() == single.keys(), where
        for key in single:
            assert_same(ddp[key], single[key], f"{where}/{key}")
    elif isinstance(single, (list, tuple)):
        assert len(ddp) == len(single), where
        for index, (a, b) in enumerate(zip(ddp, single, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    elif isinstance(single, torch.Tensor):
        torch.testing.assert_close(ddp, single, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(single, float) and math.isnan(single):
        assert math.isnan(ddp), where
    else:
        assert ddp == single, where


def assert_same_entries(ddp: list[dict], single: list[dict]) -> None:
    """History entries equal bit for bit but for the global step (two processes take half the steps)."""
    assert len(ddp) == len(single)
    for a, b in zip(ddp, single, strict=True):
        values = {key: value for key, value in b.items() if key not in ("global_step", "problems")}
        assert_same({key: a[key] for key in values}, values, f"epoch {b['epoch']}")


def agreement_probe() -> AgreementProbe:
    return AgreementProbe(
        odd_data(),
        teacher_layer="features.relu2",
        student_layer="features.relu2",
        reference=net(2),
        eps=(2 / 255, 0.3),
        max_batch=2,
        log_images=3,
    )


def one_image_probe() -> AgreementProbe:
    """A probe of one image: under two processes, rank 1 has none."""
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    return AgreementProbe(
        images, torch.tensor([1]), teacher_layer="features.relu2", student_layer="features.relu2", name="one"
    )


@pytest.mark.slow
def test_two_processes_record_the_one_process_values_and_fail_together(tmp_path: Path) -> None:
    single = fit(tmp_path / "single", agreement_probe(), one_image_probe())
    ddp = fit(tmp_path / "ddp", agreement_probe(), one_image_probe(), strategy="ddp_spawn", devices=2)
    one = torch.load(single / "kd_probe_agreement.pt", weights_only=True)["entries"]
    two = torch.load(ddp / "kd_probe_agreement.pt", weights_only=True)["entries"]
    assert [e["epoch"] for e in two] == [0, 1, 2]  # once per epoch, not once per process
    assert [e["global_step"] for e in two] == [0, 2, 4]  # two processes: half the batches each
    assert [e.get("failed") for e in one] == [None] * 3  # rank 1 alone breaks: a single run never does
    assert_same_entries(two[:2], one[:2])
    assert {"cam_cosine", "cam_win", "teacher_fooled/eps_76.5", "invariance/crop/student"} <= set(two[0]["per_image"])
    assert two[0]["per_image"]["cam_cosine"].shape == (5,)
    assert any(bool(e["per_image"]["teacher_fooled/eps_76.5"].any()) for e in one)  # a transfer was measured
    # logged once per probe, by rank zero, the values of the file
    cosines = [e["cam_cosine"] for e in two[:2]]
    assert scalars(ddp, "3_agreement/cam_cosine") == pytest.approx(cosines, abs=1e-7)
    # the student broke on rank 1 only: every rank records the probe of epoch 2 as failed, with rank 1's reason
    failed = two[2]["failed"]
    assert failed.startswith("FloatingPointError: `model` gave NaN or infinite logits for 2 of 2 images")
    assert failed.endswith("(rank 1)") and set(two[2]) == {"epoch", "global_step", "failed"}
    histories = [json.loads((tmp_path / "ddp" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert histories[0] == histories[1] == [[0, None], [1, None], [2, failed]]
    # a rank without images takes part in every step: the one-image probe records the one-process values too
    one, two = (torch.load(run / "kd_probe_agreement_one.pt", weights_only=True)["entries"] for run in (single, ddp))
    assert_same_entries(two[:2], one[:2])
    assert two[0]["per_image"]["cam_cosine"].shape == (1,) and two[2]["failed"].endswith("(rank 1)")
