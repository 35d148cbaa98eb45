"""Issue 33: ``ProbeRunner`` drives the probes from a plain PyTorch loop, without a ``Trainer``; the loop records
what a Lightning run of the same training records, bit for bit, and a runner continues from its saved state."""

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kd_probe import (
    AgreementProbe,
    KnowledgePointProbe,
    ProbeRunner,
    ShapesDataModule,
    UniCAMProbe,
    WeightTrajectoryMonitor,
)
from tests.callbacks.conftest import trainer
from tests.callbacks.test_agreement_ddp import assert_same, net

EPOCHS = 3


def data() -> ShapesDataModule:
    return ShapesDataModule(num_classes=3, image_size=16, train_size=32, val_size=8, test_size=8, probe_size=4)


def training_set() -> TensorDataset:
    """The whole training split as one batch, in order: one optimizer step per epoch, the same in both loops."""
    split = data()
    split.setup("fit")
    images, labels = zip(*[(item[0], item[1]) for item in split.train_set], strict=True)
    return TensorDataset(torch.stack(images), torch.as_tensor(labels))


def probes() -> list[pl.Callback]:
    return [
        KnowledgePointProbe(data(), layer="features.conv2", grid=4, samples=4, steps=4),
        AgreementProbe(data(), teacher_layer="features.relu2", student_layer="features.relu2", log_images=2),
        UniCAMProbe(data(), layers=["features.relu2"], cam_layer="features.relu2", log_images=2),
        WeightTrajectoryMonitor(),
    ]


class Plain(pl.LightningModule):
    """Cross-entropy with plain SGD on the student; the teacher is only looked at."""

    def __init__(self) -> None:
        super().__init__()
        self.student, self.teacher = net(1), net(0)

    def training_step(self, batch: Any, _: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.student(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.student.parameters(), lr=0.2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(training_set(), batch_size=32)


def lightning_run(folder: Path) -> list[pl.Callback]:
    used = probes()
    logger = TensorBoardLogger(folder, name="run", version="")
    trainer(folder, max_epochs=EPOCHS, logger=logger, callbacks=used, limit_val_batches=0).fit(Plain())
    return used


def plain_loop(folder: Path, used: list[pl.Callback] | None = None) -> tuple[list[pl.Callback], nn.Module]:
    """The same training in a plain loop, probed by a runner."""
    student, teacher = net(1), net(0)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.2)
    used = probes() if used is None else used
    with ProbeRunner(used, folder / "run", student=student, teacher=teacher, progress=False) as runner:
        for _ in range(EPOCHS):
            for images, labels in DataLoader(training_set(), batch_size=32):
                optimizer.zero_grad()
                F.cross_entropy(student(images), labels).backward()
                optimizer.step()
                runner.step()
            runner.epoch_end()
    return used, student


def histories(used: list[pl.Callback]) -> list[Any]:
    """Each probe's history (the weight monitor's summary), without the words of any logging problem."""
    return [
        [{k: v for k, v in entry.items() if k != "problems"} for entry in probe.history]
        if hasattr(probe, "history")
        else probe.summary()
        for probe in used
    ]


@pytest.mark.slow
def test_a_plain_loop_records_what_a_lightning_run_of_the_same_training_records(tmp_path: Path) -> None:
    live = lightning_run(tmp_path / "lightning")
    plain, _ = plain_loop(tmp_path / "plain")
    for probe in live[:3]:
        assert [entry["epoch"] for entry in probe.history] == [0, 1, 2, 3]
        assert all(entry.get("failed") is None for entry in probe.history)
    assert_same(histories(plain), histories(live), "history")
    for name in ("kd_probe_history.pt", "kd_probe_agreement.pt", "kd_probe_unicam.pt", "kd_probe_summary.json"):
        assert (tmp_path / "plain" / "run" / name).is_file(), name
    events = list((tmp_path / "plain" / "run").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard events"


def test_runner_mistakes_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^`probes` must be a list of kd_probe callbacks \(its probes and monitors\)"):
        ProbeRunner(WeightTrajectoryMonitor(), tmp_path, student=net(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^`probes` must be a list of kd_probe callbacks"):  # not a Trainer's own
        ProbeRunner([pl.callbacks.ModelCheckpoint()], tmp_path, student=net(1))
    with pytest.raises(ValueError, match=r"^`student` must be an nn.Module, got str\.$"):
        ProbeRunner([], tmp_path, student="net")  # type: ignore[arg-type]
    runner = ProbeRunner([WeightTrajectoryMonitor()], tmp_path / "run", student=net(1), progress=False)
    with pytest.raises(RuntimeError, match=r"^ProbeRunner.step\(\) needs a started runner; this one is not"):
        runner.step()
    runner.start()
    runner.epoch_end(2)
    with pytest.raises(ValueError, match=r"^`epoch` must be an integer above the last one, 2, got 2\.$"):
        runner.epoch_end(2)
    runner.finish()
    with pytest.raises(RuntimeError, match=r"finish\(\)ed"):
        runner.epoch_end()
