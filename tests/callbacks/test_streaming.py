"""Issue 32: the agreement and UniCAM probes keep their probe set on the host and send it to the networks'
device ``STREAM`` images at a time (the knowledge-point probe's test is in ``test_knowledge_point_probe.py``):
no forward sees more than a chunk, and the history is the one-chunk history bit for bit."""

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from kd_probe import AgreementProbe, DistillationModule, ShapesDataModule, UniCAMProbe
from kd_probe.callbacks import _streaming
from kd_probe.callbacks._base import BatchProbe
from kd_probe.callbacks._streaming import chunk_slices, streamed
from tests.callbacks.conftest import trainer
from tests.callbacks.test_agreement_ddp import assert_same_entries, net


def data() -> ShapesDataModule:
    """Five probe images (chunks of 3 and 2 with ``STREAM`` = 3) and training batches of 2."""
    return ShapesDataModule(
        num_classes=3, image_size=16, train_size=8, val_size=4, test_size=4, probe_size=5, batch_size=2
    )


def probes() -> list[BatchProbe]:
    return [
        AgreementProbe(
            data(),
            teacher_layer="features.relu2",
            student_layer="features.relu2",
            reference=net(2),
            eps=(2 / 255, 0.3),
            log_images=0,
        ),
        UniCAMProbe(
            data(),
            layers=[("features.relu1", "features.relu1"), "features.relu2"],
            cam_layer="features.relu2",
            reference=net(3),
            log_images=0,
        ),
    ]


def fit(folder: Path) -> tuple[list[list[dict[str, Any]]], set[int]]:
    """Two epochs of a student that learns with both probes; each probe's history and the batch sizes that any
    of the four networks saw."""
    module = DistillationModule(net(1), net(0), lr=0.05)
    sizes: set[int] = set()
    hooks = [
        network.register_forward_pre_hook(lambda _, args: sizes.add(int(args[0].shape[0])))
        for network in (module.student, module.teacher)
    ]
    used = probes()
    for probe in used:
        hooks.append(probe.reference.register_forward_pre_hook(lambda _, args: sizes.add(int(args[0].shape[0]))))
    logger = TensorBoardLogger(folder, name="run", version=0)
    trainer(folder, max_epochs=2, logger=logger, callbacks=used).fit(module, datamodule=data())
    for hook in hooks:
        hook.remove()
    return [probe.history for probe in used], sizes


def test_probe_sets_visit_the_device_a_chunk_at_a_time_with_the_one_chunk_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole, whole_sizes = fit(tmp_path / "whole")
    assert 5 in whole_sizes  # the probe set fits in one chunk: one forward of all five
    monkeypatch.setattr(_streaming, "STREAM", 3)
    chunked, chunked_sizes = fit(tmp_path / "chunked")
    assert 5 not in chunked_sizes and 3 in chunked_sizes, chunked_sizes  # (4: the cost estimate's sample)
    for streamed_history, one_chunk in zip(chunked, whole, strict=True):
        assert [entry.get("failed") for entry in one_chunk] == [None] * 3
        assert_same_entries(streamed_history, one_chunk)


def test_streamed_concatenates_the_chunks_on_the_rows_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_streaming, "STREAM", 2)
    seen: list[int] = []

    def work(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x.sum(dim=1) + y

    rows = torch.arange(10.0).reshape(5, 2)
    result = streamed(work, torch.device("cpu"), rows, torch.ones(5))
    assert seen == [2, 2, 1]
    assert result.tolist() == [2.0, 6.0, 10.0, 14.0, 18.0]
    assert chunk_slices(0) == [slice(0, 0)]  # an empty set still runs once
    assert chunk_slices(5, 4) == [slice(0, 4), slice(4, 5)]
