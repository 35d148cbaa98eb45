"""``load_weights``: a network's weights from a DistillationModule checkpoint or a state_dict file, else one
sentence naming the setting and the path."""

from pathlib import Path

import pytest
import torch

from kd_probe import DistillationModule
from kd_probe.models import VGG, load_weights
from tests.modules.conftest import tiny_data, tiny_trainer


def tiny_vgg() -> VGG:
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)


def test_a_state_dict_file_loads_into_a_network_of_the_same_architecture(tmp_path: Path) -> None:
    saved = tiny_vgg()
    torch.save(saved.state_dict(), tmp_path / "weights.pt")
    loaded = load_weights(tiny_vgg(), tmp_path / "weights.pt")
    assert all(
        torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values(), strict=True)
    )


def test_a_distillation_checkpoint_gives_its_students_weights(tmp_path: Path) -> None:
    module = DistillationModule(tiny_vgg(), tiny_vgg(), checkpoint_teacher=True)
    trainer = tiny_trainer(tmp_path, enable_checkpointing=True, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=tiny_data())
    (path,) = tmp_path.glob("**/*.ckpt")
    loaded = load_weights(tiny_vgg(), path)  # the student's weights, not the teacher's kept beside them
    assert torch.equal(loaded.features.conv1.weight, module.student.features.conv1.weight)
    assert not torch.equal(loaded.features.conv1.weight, module.teacher.features.conv1.weight)


def test_a_missing_file_names_the_setting_and_the_path(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"^`teacher_checkpoint`: there is no checkpoint file at 'nowhere.ckpt'"
    ):
        load_weights(tiny_vgg(), "nowhere.ckpt", argument="teacher_checkpoint")


def test_weights_of_another_architecture_are_refused_with_the_first_differences(tmp_path: Path) -> None:
    torch.save(VGG(num_classes=3, widths=(4, 8, 16), convs_per_stage=1).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ValueError) as error:
        load_weights(tiny_vgg(), tmp_path / "wide.pt", argument="student_checkpoint")
    message = str(error.value)
    assert message.startswith(
        f"`student_checkpoint`={str(tmp_path / 'wide.pt')!r} does not hold the weights of this VGG"
    )
    assert "unexpected, e.g. ['features.conv3.weight'" in message
    assert "'head.fc.weight' is (3, 16) in the file but (3, 8) here" in message


class Unpicklable:
    """Not plain data: torch.load(weights_only=True) refuses a file that holds it."""


def test_files_that_are_not_weights_are_refused(tmp_path: Path) -> None:
    torch.save({"net": Unpicklable()}, tmp_path / "object.pt")
    with pytest.raises(ValueError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        load_weights(tiny_vgg(), tmp_path / "object.pt")
    torch.save({"epoch": 3}, tmp_path / "numbers.pt")
    with pytest.raises(ValueError, match=r"holds no weights: .* got a dict with keys \['epoch'\]"):
        load_weights(tiny_vgg(), tmp_path / "numbers.pt")
