"""The demo's distillation set-up shared by the benchmarks that time training with kd_probe callbacks."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl

from kd_probe import DistillationModule, ShapesDataModule
from kd_probe.models import VGG


def demo_data(probe_size: int = 10) -> ShapesDataModule:
    """The demo's built-in data (6 classes, 32 px, 4000/1000/1000 images, background bias 0.2, seed 0), set up."""
    data = ShapesDataModule(
        num_classes=6,
        image_size=32,
        train_size=4000,
        val_size=1000,
        test_size=1000,
        probe_size=probe_size,
        background_bias=0.2,
        batch_size=64,
        seed=0,
    )
    data.setup("fit")
    return data


def demo_distillation_module(seed: int = 0) -> DistillationModule:
    """Student VGG(16,32,64)×2 distilled from a VGG(32,64,128)×2 teacher with the demo's AdamW recipe."""
    pl.seed_everything(seed, verbose=False)
    teacher = VGG(6, widths=(32, 64, 128), convs_per_stage=2)
    student = VGG(6, widths=(16, 32, 64), convs_per_stage=2)
    return DistillationModule(student, teacher, optimizer="adamw", lr=3e-3, weight_decay=1e-4)


def quiet_trainer(**options: Any) -> pl.Trainer:
    """A Trainer without logger, checkpoints, progress bar or summary (timing only)."""
    defaults: dict[str, Any] = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return pl.Trainer(**{**defaults, **options})


def timed(probe_class: type) -> type:
    """``probe_class`` with a stopwatch around each ``probe`` call (seconds in ``.seconds``)."""

    class Timed(probe_class):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.seconds: list[float] = []

        def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> dict[str, Any]:
            start = time.perf_counter()
            entry = super().probe(trainer, pl_module, epoch)
            self.seconds.append(time.perf_counter() - start)
            return entry

    return Timed
