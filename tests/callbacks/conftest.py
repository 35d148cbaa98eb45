"""Tiny data, networks and Trainers for the callback tests (each fit takes about a second)."""

import atexit
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from kd_probe import ShapesDataModule
from kd_probe.models import VGG
from tests.modules.conftest import tiny_trainer

PROBE = dict(grid=4, samples=4, steps=25, method="faithful")  # the boost/stop check happens at step 3


def tiny_data() -> ShapesDataModule:
    return ShapesDataModule(
        num_classes=3, image_size=16, train_size=64, val_size=16, test_size=16, probe_size=6, batch_size=16
    )


def tiny_net(batch_norm: bool = True) -> VGG:
    torch.manual_seed(0)
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1, batch_norm=batch_norm)


def loaders(data: ShapesDataModule) -> dict[str, DataLoader]:
    """Unshuffled loaders, so that a resumed run sees the same batches as an uninterrupted one."""
    return {
        "train_dataloaders": DataLoader(data.train_set, batch_size=16, shuffle=False),
        "val_dataloaders": DataLoader(data.val_set, batch_size=16, shuffle=False),
    }


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class EndProcessGroup(pl.Callback):
    """Destroys a worker's process group when the worker exits. Lightning's ddp_spawn leaves it to interpreter
    shutdown, where gloo's threads are sometimes torn down while still running ("terminate called without an
    active exception", SIGABRT in a worker after a finished fit)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        atexit.register(_destroy_process_group)


def trainer(root: Path, **kw: Any) -> pl.Trainer:
    options: dict[str, Any] = dict(max_epochs=2, log_every_n_steps=1, accelerator="cpu", devices=1)
    options.update(kw)
    if str(options.get("strategy", "")).startswith("ddp"):
        options["callbacks"] = [*options.get("callbacks", []), EndProcessGroup()]
    return tiny_trainer(root, **options)


class RecordingLogger(Logger):
    """Keeps every logged value with its step: ``{tag: [(step, value), ...]}`` (step -1 when none is given)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[tuple[int, float]]] = {}

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.values.setdefault(key, []).append((-1 if step is None else step, float(value)))

    def series(self, tag: str) -> list[float]:
        return [value for _, value in self.values.get(tag, [])]

    def steps(self, tag: str) -> list[int]:
        return [step for step, _ in self.values.get(tag, [])]
