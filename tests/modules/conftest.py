"""Tiny teachers, students and data so that every Lightning test runs in about a second."""

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from kd_probe import ShapesDataModule
from kd_probe.models import VGG, ResNet


def tiny_data(**kw: Any) -> ShapesDataModule:
    options: dict[str, Any] = dict(
        num_classes=3, image_size=16, train_size=48, val_size=16, test_size=16, probe_size=4, batch_size=16
    )
    options.update(kw)
    return ShapesDataModule(**options)


def tiny_student() -> VGG:
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)


def tiny_teacher() -> ResNet:
    return ResNet(num_classes=3, widths=(8, 16), blocks_per_stage=1)


def tiny_trainer(root: Path, **kw: Any) -> pl.Trainer:
    options: dict[str, Any] = dict(
        max_epochs=1,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kw)
    return pl.Trainer(**options)


@pytest.fixture
def data() -> ShapesDataModule:
    return tiny_data()
