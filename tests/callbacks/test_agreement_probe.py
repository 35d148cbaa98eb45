import copy
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_probe import AgreementProbe, DistillationModule
from tests.callbacks.conftest import tiny_data, tiny_net, trainer


def _events(folder: str) -> dict:
    events = EventAccumulator(folder, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events.Tags()


def test_a_student_copied_from_the_teacher_agrees_fully_and_every_tag_is_logged(tmp_path: Path) -> None:
    data = tiny_data()
    teacher = tiny_net()
    student = copy.deepcopy(teacher)
    probe = AgreementProbe(
        data,
        teacher_layer="features.relu2",
        student_layer="features.relu2",
        eps=0.3,
        reference=tiny_net(),
        transforms=("color", "shift"),
    )
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[probe]).fit(
        DistillationModule(student, teacher), datamodule=data
    )
    first = probe.history[0]
    assert first["epoch"] == 0 and first["cam_cosine"] == pytest.approx(1.0, abs=1e-5)
    if first["teacher_fooling_rate"] > 0:
        assert first["adv_transfer"] == 1.0
    assert first["invariance/color/student"] == first["invariance/color/teacher"]
    tags = _events(logger.log_dir)
    for tag in (
        "cam_cosine",
        "cam_win_rate",
        "adv_transfer",
        "teacher_fooling_rate",
        "cam_energy_in_mask/student",
        "cam_energy_in_mask/teacher",
        "invariance/color/student",
        "invariance/shift/teacher",
    ):
        assert f"kd_probe/agreement/{tag}" in tags["scalars"], tag
    assert "kd_probe/agreement/cams" in tags["images"]
    assert [e["epoch"] for e in probe.history] == [0, 1]


def test_teacher_side_work_is_cached(tmp_path: Path) -> None:
    data = tiny_data()
    probe = AgreementProbe(data, teacher_layer="features.relu2", student_layer="features.relu2")
    trainer(tmp_path, max_epochs=2, callbacks=[probe]).fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data)
    cache = probe._cache
    assert cache is not None and len(probe.history) == 3
    probe.probe(trainer(tmp_path, max_epochs=1), DistillationModule(tiny_net(), tiny_net()), 9)
    assert probe._cache is cache  # the teacher side was computed once


def test_the_probe_does_not_change_training(tmp_path: Path) -> None:
    data = tiny_data()
    plain, probed = DistillationModule(tiny_net(), tiny_net()), DistillationModule(tiny_net(), tiny_net())
    torch.manual_seed(7)
    trainer(tmp_path / "a").fit(plain, datamodule=data)
    torch.manual_seed(7)
    probe = AgreementProbe(data, teacher_layer="features.relu2", student_layer="features.relu2")
    trainer(tmp_path / "b", callbacks=[probe]).fit(probed, datamodule=data)
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_teacher_given_as_a_module_probes_a_baseline(tmp_path: Path) -> None:
    data = tiny_data()
    probe = AgreementProbe(data, teacher_layer="features.relu2", student_layer="features.relu2", teacher=tiny_net())
    trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
    assert len(probe.history) == 2


def test_bad_input_is_refused(tmp_path: Path) -> None:
    data = tiny_data()
    with pytest.raises(ValueError, match=r"`transforms` has unknown names \['blur'\]"):
        AgreementProbe(data, teacher_layer="x", student_layer="y", transforms=("blur",))
    with pytest.raises(ValueError, match=r"`labels` must hold one class per image, shape \(4,\), got \(3,\)"):
        AgreementProbe(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2]), teacher_layer="x", student_layer="y")
    probe = AgreementProbe(data, teacher_layer="features.relu9", student_layer="features.relu2")
    with pytest.raises(ValueError, match=r"`teacher_layer`='features.relu9' is not a module of VGG"):
        trainer(tmp_path, callbacks=[probe]).fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data)
    probe = AgreementProbe(data, teacher_layer="features.relu2", student_layer="features.relu2")
    with pytest.raises(ValueError, match=r"`teacher`='teacher' is not a module attribute of DistillationModule"):
        trainer(tmp_path, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
