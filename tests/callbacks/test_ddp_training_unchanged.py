"""Issue 32: under DDP every probe leaves training bitwise unchanged. The sharded probes run collectives from
training hooks on every rank; a two-process run of a learning student with all four probes ends with the weights
of the same two-process run without any probe, bit for bit."""

from pathlib import Path

import pytest
import torch

from kd_probe import (
    AgreementProbe,
    DistillationModule,
    KnowledgePointProbe,
    UniCAMProbe,
    WeightTrajectoryMonitor,
)
from tests.callbacks.conftest import trainer
from tests.callbacks.test_agreement_ddp import net, odd_data


def trained_weights(folder: Path, probed: bool) -> dict[str, torch.Tensor]:
    """The student's weights after two epochs over two processes (``ddp_spawn`` brings them back)."""
    module = DistillationModule(net(1), net(0), lr=0.05)
    probes = [
        KnowledgePointProbe(odd_data(), layer="features.conv2", grid=4, samples=4, steps=4),
        AgreementProbe(odd_data(), teacher_layer="features.relu2", student_layer="features.relu2", log_images=2),
        UniCAMProbe(odd_data(), layers=["features.relu2"], cam_layer="features.relu2", log_images=2),
        WeightTrajectoryMonitor(),
    ]
    run = trainer(folder, max_epochs=2, callbacks=probes if probed else [], strategy="ddp_spawn", devices=2)
    run.fit(module, datamodule=odd_data())
    return {name: value.clone() for name, value in module.student.state_dict().items()}


@pytest.mark.slow
def test_two_processes_train_the_same_weights_with_and_without_probes(tmp_path: Path) -> None:
    plain = trained_weights(tmp_path / "plain", probed=False)
    probed = trained_weights(tmp_path / "probed", probed=True)
    assert plain.keys() == probed.keys()
    moved = [name for name in plain if not torch.equal(plain[name], net(1).state_dict()[name])]
    assert moved, "the student did not learn: the test would prove nothing"
    for name in plain:
        assert torch.equal(plain[name], probed[name]), name
