from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from kd_probe import run_two_phase
from tests.modules.conftest import tiny_data, tiny_student


def test_two_phases_mimic_then_train_the_head_on_frozen_features(tmp_path: Path) -> None:
    teacher, student = tiny_student(), tiny_student()  # [KP]: teacher and student share one architecture
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    snapshots: dict[str, dict[str, torch.Tensor]] = {}

    class Snapshot(pl.Callback):
        def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            snapshots[module.stage] = {k: v.clone() for k, v in module.student.state_dict().items()}

    result = run_two_phase(
        student,
        teacher,
        tiny_data(),
        layer="features.conv2",
        mimic_epochs=2,
        head_epochs=2,
        trainer_options=dict(
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        ),
        head_trainer_options=dict(limit_train_batches=1),  # per-phase Trainer options override the shared ones
        mimic_callbacks=[Snapshot()],
        head_callbacks=[Snapshot()],
        lr=0.1,
    )
    mimic, head = snapshots["mimic"], snapshots["head"]
    # phase 1 moved the layers up to L and never the classifier (no labels)
    assert not torch.equal(initial["features.conv2.weight"], mimic["features.conv2.weight"])
    assert torch.equal(initial["head.fc.weight"], mimic["head.fc.weight"])
    # phase 2 left everything up to and including L as phase 1 left it, and trained the rest
    for key in ("features.conv1.weight", "features.bn1.running_mean", "features.conv2.weight"):
        assert torch.equal(mimic[key], head[key]), key
    assert not torch.equal(mimic["head.fc.weight"], head["head.fc.weight"])
    assert not torch.equal(mimic["features.bn2.weight"], head["features.bn2.weight"])  # bn2 runs after conv2
    assert result.head_module.student is student and result.mimic_module.student is student
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
    assert (result.mimic_trainer.global_step, result.head_trainer.global_step) == (6, 2)


def test_two_phase_refuses_an_unknown_layer_before_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`layer`='features.conv7' is not a module of VGG"):
        run_two_phase(tiny_student(), tiny_student(), tiny_data(), layer="features.conv7")
