import copy
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_probe import AgreementProbe, DistillationModule
from kd_probe.models import VGG
from tests.callbacks.conftest import RecordingLogger, tiny_data, tiny_net, trainer


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
    if first["teacher_fooling_rate/eps_76.5"] > 0:
        assert first["adv_transfer/eps_76.5"] == 1.0
    assert first["invariance/color/student"] == first["invariance/color/teacher"]
    tags = _events(logger.log_dir)
    for tag in (
        "cam_cosine",
        "cam_win_rate",
        "adv_transfer/eps_76.5",
        "teacher_fooling_rate/eps_76.5",
        "cam_energy_in_mask/student",
        "cam_energy_in_mask/teacher",
        "invariance/color/student",
        "invariance/shift/teacher",
    ):
        assert f"3_agreement/{tag}" in tags["scalars"], tag
    assert "3_agreement/cams" in tags["images"]
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


def _other_student() -> VGG:
    torch.manual_seed(1)
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)


def test_an_eps_sweep_logs_each_radius_once(tmp_path: Path) -> None:
    data = tiny_data()
    probe = AgreementProbe(
        data, teacher_layer="features.relu2", student_layer="features.relu2", eps=(0, 0.3), transforms=()
    )
    recorder = RecordingLogger()
    trainer(tmp_path, max_epochs=1, logger=recorder, callbacks=[probe]).fit(
        DistillationModule(_other_student(), tiny_net()), datamodule=data
    )
    assert probe.eps_keys == ("eps_0", "eps_76.5")
    tag = "3_agreement/{}".format
    for entry in probe.history:
        # ε = 0 fools nobody: the rate is 0 and the transfer, with no image behind it, is NaN and never logged
        assert entry["teacher_fooling_rate/eps_0"] == 0.0 and math.isnan(entry["adv_transfer/eps_0"])
        assert entry["teacher_fooling_rate/eps_76.5"] > 0
        assert "teacher_fooling_rate" not in entry and "adv_transfer" not in entry  # no unsuffixed copy
    assert recorder.series(tag("teacher_fooling_rate/eps_0")) == [0, 0]
    assert tag("adv_transfer/eps_0") not in recorder.values
    assert not [name for name in recorder.values if name.endswith(("/adv_transfer", "/teacher_fooling_rate"))]
    assert recorder.series(tag("adv_transfer/eps_76.5")) == [e["adv_transfer/eps_76.5"] for e in probe.history]
    assert recorder.series(tag("teacher_fooling_rate/eps_76.5")) == [
        e["teacher_fooling_rate/eps_76.5"] for e in probe.history
    ]
    assert recorder.steps(tag("adv_transfer/eps_76.5")) == [e["global_step"] for e in probe.history]


def test_one_eps_logs_its_suffixed_tags_as_a_sweep_does(tmp_path: Path) -> None:
    data = tiny_data()
    probe = AgreementProbe(data, teacher_layer="features.relu2", student_layer="features.relu2", eps=0.3)
    recorder = RecordingLogger()
    trainer(tmp_path, max_epochs=1, logger=recorder, callbacks=[probe]).fit(
        DistillationModule(_other_student(), tiny_net()), datamodule=data
    )
    assert sorted(name for name in recorder.values if "/eps_" in name) == [
        "3_agreement/adv_transfer/eps_76.5",
        "3_agreement/teacher_fooling_rate/eps_76.5",
    ]
    transfer = [e["adv_transfer/eps_76.5"] for e in probe.history]
    assert recorder.series("3_agreement/adv_transfer/eps_76.5") == transfer
    assert {"teacher_fooled/eps_76.5", "student_fooled/eps_76.5"} <= set(probe.history[0]["per_image"])


def test_the_default_sweep_is_1_2_4_and_8_grey_levels() -> None:
    probe = AgreementProbe(tiny_data(), teacher_layer="features.relu2", student_layer="features.relu2")
    assert probe.eps == (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    assert probe.eps_keys == ("eps_1", "eps_2", "eps_4", "eps_8")
    assert AgreementProbe(tiny_data(), teacher_layer="x", student_layer="y", eps=[0.5 / 255]).eps_keys == ("eps_0.5",)


@pytest.mark.parametrize(
    ("eps", "message"),
    [
        ([], r"`eps` must hold at least one I-FGSM radius in \[0, 1\] \(pixel units: .*\), got \[\]\."),
        (-0.1, r"`eps` radii must be finite numbers in \[0, 1\] \(pixel units: 8/255 is 8 grey levels\), got -0\.1\."),
        ((1 / 255, math.nan), r"`eps` radii must be finite numbers in \[0, 1\] .*, got nan in \(0\.0039\d*, nan\)\."),
        (8, r"`eps` radii must be finite numbers in \[0, 1\] \(pixel units: 8/255 is 8 grey levels\), got 8\."),
        ("1/255", r"`eps` must be an I-FGSM radius in \[0, 1\] or a list of radii \(pixel units: .*\), got '1/255'\."),
        (["1/255"], r"`eps` radii must be finite numbers in \[0, 1\] .*, got '1/255' in \['1/255'\]\."),
        (
            (1 / 255, 1.00001 / 255),
            r"`eps` values 0\.0039\d* and 0\.0039\d* both give the name eps_1 \(ε·255 rounded to 4 decimals\); "
            r"give distinct radii",
        ),
    ],
)
def test_bad_eps_is_refused_with_the_value(eps: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AgreementProbe(tiny_data(), teacher_layer="x", student_layer="y", eps=eps)  # type: ignore[arg-type]


def _fit_sweep(tmp_path: Path, **options: object) -> tuple[AgreementProbe, pl.Trainer]:
    data = tiny_data()
    probe = AgreementProbe(
        data,
        teacher_layer="features.relu2",
        student_layer="features.relu2",
        eps=(1 / 255, 0.1, 0.3),
        reference=tiny_net(),
        **options,  # type: ignore[arg-type]
    )
    fit = trainer(tmp_path, max_epochs=2, logger=TensorBoardLogger(tmp_path, name="run"), callbacks=[probe])
    fit.fit(DistillationModule(_other_student(), tiny_net()), datamodule=data)
    return probe, fit


def test_every_scalar_is_the_mean_of_its_per_image_values(tmp_path: Path) -> None:
    probe, _ = _fit_sweep(tmp_path)
    assert [e["epoch"] for e in probe.history] == [0, 1, 2]
    for entry in probe.history:
        per_image = entry["per_image"]
        count = probe.images.shape[0]
        assert all(v.shape == (count,) and v.device.type == "cpu" for v in per_image.values())
        assert entry["cam_cosine"] == pytest.approx(float(per_image["cam_cosine"].mean()), abs=1e-7)
        assert per_image["cam_win"].dtype == torch.bool
        assert entry["cam_win_rate"] == pytest.approx(float(per_image["cam_win"].float().mean()), abs=1e-7)
        for role in ("student", "teacher"):
            energy = per_image[f"cam_energy_in_mask/{role}"]
            assert entry[f"cam_energy_in_mask/{role}"] == pytest.approx(float(energy.nanmean()), abs=1e-7)
        for key in probe.eps_keys:
            teacher_fooled, student_fooled = per_image[f"teacher_fooled/{key}"], per_image[f"student_fooled/{key}"]
            assert teacher_fooled.dtype == student_fooled.dtype == torch.bool
            rate = int(teacher_fooled.sum()) / count
            assert entry[f"teacher_fooling_rate/{key}"] == pytest.approx(rate, abs=1e-7)
            both, behind = int((teacher_fooled & student_fooled).sum()), int(teacher_fooled.sum())
            if behind:
                assert entry[f"adv_transfer/{key}"] == pytest.approx(both / behind, abs=1e-7)
            else:
                assert math.isnan(entry[f"adv_transfer/{key}"])
        for transform in probe.transforms:
            for role in ("student", "teacher"):
                unchanged = per_image[f"invariance/{transform}/{role}"]
                assert unchanged.dtype == torch.bool
                assert entry[f"invariance/{transform}/{role}"] == pytest.approx(float(unchanged.float().mean()))
    assert any(e["teacher_fooling_rate/eps_76.5"] > 0 for e in probe.history)  # the identity had images behind it
    assert set(probe.history[0]["per_image"]) == {
        "cam_cosine",
        "cam_win",
        "cam_energy_in_mask/student",
        "cam_energy_in_mask/teacher",
        *(f"{who}_fooled/{key}" for who in ("teacher", "student") for key in ("eps_1", "eps_25.5", "eps_76.5")),
        *(f"invariance/{t}/{role}" for t in ("color", "crop", "shift") for role in ("student", "teacher")),
    }
    resumed = AgreementProbe(
        tiny_data(),
        teacher_layer="features.relu2",
        student_layer="features.relu2",
        eps=(1 / 255, 0.1, 0.3),
        reference=tiny_net(),
    )
    resumed.load_state_dict(probe.state_dict())
    assert resumed.history is not probe.history and len(resumed.history) == 3
    assert torch.equal(resumed.history[2]["per_image"]["cam_cosine"], probe.history[2]["per_image"]["cam_cosine"])


def test_the_per_image_file_is_written_after_every_probe_and_loads_weights_only(tmp_path: Path) -> None:
    saved: list[list[int]] = []

    class Watch(pl.Callback):
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            record = torch.load(probe.file_path(trainer), weights_only=True)
            saved.append([entry["epoch"] for entry in record["entries"]])

    data = tiny_data()
    probe = AgreementProbe(
        data, teacher_layer="features.relu2", student_layer="features.relu2", eps=(0.3, 0.1), name="kl"
    )
    logger = TensorBoardLogger(tmp_path, name="run")
    fit = trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[probe, Watch()])
    fit.fit(DistillationModule(_other_student(), tiny_net()), datamodule=data)
    path = probe.file_path(fit)
    assert path == Path(logger.log_dir) / "kd_probe_agreement_kl.pt"
    assert saved == [[0, 1], [0, 1, 2]]  # the probe of epoch e is written before the next callback sees epoch e
    record = torch.load(path, weights_only=True)
    assert record["settings"] == probe.recorded_settings() and record["settings"]["steps"] == 5
    assert {k: v for k, v in record.items() if k not in ("labels", "entries", "settings")} == {
        "version": 1,
        "eps": [0.3, 0.1],
        "eps_keys": ["eps_76.5", "eps_25.5"],
        "steps": 5,
        "transforms": ["color", "crop", "shift"],
        "teacher_layer": "features.relu2",
        "student_layer": "features.relu2",
        "reference": False,
        "masks": True,
        "images": 6,
    }
    assert record["labels"].dtype == torch.long and torch.equal(record["labels"], probe.labels)
    assert len(record["entries"]) == len(probe.history) == 3
    for stored, kept in zip(record["entries"], probe.history, strict=True):
        assert stored.keys() == kept.keys()
        for key, value in kept.items():
            if key == "per_image":
                assert stored[key].keys() == value.keys()
                for name, values in value.items():  # bit for bit, NaN where NaN
                    torch.testing.assert_close(stored[key][name], values, rtol=0, atol=0, equal_nan=True)
            elif isinstance(value, float) and math.isnan(value):
                assert math.isnan(stored[key]), key
            else:
                assert stored[key] == value, key
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporary file left behind
