import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_probe import DistillationModule, UniCAMProbe
from kd_probe.core.distance_correlation import (
    correlation_of_distances,
    distance_correlation,
    relevance_given,
    relevance_given_of_distances,
)
from kd_probe.core.unicam import layer_features
from tests.callbacks.conftest import tiny_data, tiny_net, trainer

PAIRS = [("features.relu1", "features.relu1"), "features.relu2"]


def _tags(folder: str) -> dict:
    events = EventAccumulator(folder, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events.Tags()


def test_a_student_copied_from_the_teacher_every_tag_and_the_file(tmp_path: Path) -> None:
    data = tiny_data()
    teacher = tiny_net()
    reference = copy.deepcopy(teacher)
    torch.manual_seed(3)
    reference.features.conv2.reset_parameters()  # a different model with the same names
    probe = UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2", reference=reference)
    student = copy.deepcopy(teacher)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[probe]).fit(
        DistillationModule(student, teacher), datamodule=data
    )
    assert [e["epoch"] for e in probe.history] == [0, 1, 2]
    first = probe.history[0]  # epoch 0, before any optimizer step: the student is the teacher
    for layer in ("features.relu1", "features.relu2"):
        assert first[f"fss/{layer}"] == pytest.approx(1.0, abs=1e-5)
        assert first[f"fss_v/{layer}"] == pytest.approx(1.0, abs=1e-5)
        assert first[f"rs/student/{layer}"] == pytest.approx(first[f"rs/teacher/{layer}"], abs=1e-6)
    tags = _tags(logger.log_dir)
    for kind in ("fss", "fss_v", "rs/teacher", "rs/student", "rs/reference", "rs/distilled", "rs/residual"):
        for layer in ("features.relu1", "features.relu2"):
            assert f"4_unicam/{kind}/{layer}" in tags["scalars"], (kind, layer)
    assert {"4_unicam/distilled", "4_unicam/residual"} <= set(tags["images"])
    saved = torch.load(Path(logger.log_dir) / "kd_probe_unicam.pt", weights_only=False)
    assert [e["epoch"] for e in saved["entries"]] == [0, 1, 2] and saved["reference"] is True
    assert saved["maps"][0]["distilled"].shape == (6, 16, 16) and saved["images"].shape == (6, 3, 16, 16)
    assert float(saved["images"].min()) >= 0 and float(saved["images"].max()) <= 1


def test_values_equal_the_functional_recomputation_and_the_model_given_itself(tmp_path: Path) -> None:
    data = tiny_data()
    teacher, student = tiny_net(), tiny_net()
    torch.manual_seed(1)
    student.features.conv1.reset_parameters()
    probe = UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2")
    module = DistillationModule(student, teacher)
    trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(module, datamodule=data)
    images, labels = probe.images, probe.labels
    last = probe.history[-1]
    for layer in ("features.relu1", "features.relu2"):
        fs, ft = layer_features(student, layer, images), layer_features(teacher, layer, images)
        assert last[f"fss/{layer}"] == pytest.approx(float(distance_correlation(ft, fs)), abs=1e-6)
        assert last[f"rs/student/{layer}"] == pytest.approx(
            float(distance_correlation(fs, torch.nn.functional.one_hot(labels).double())), abs=1e-6
        )
        assert last[f"rs/distilled/{layer}"] == pytest.approx(float(relevance_given(fs, ft, labels)), abs=1e-6)
        assert last[f"rs/residual/{layer}"] == pytest.approx(float(relevance_given(ft, fs, labels)), abs=1e-6)
    assert last["distilled_score"] == pytest.approx(last["rs/distilled/features.relu2"], abs=1e-6)


def _reproduce(entry: dict, saved: dict) -> dict[str, float]:
    """Every score of ``entry`` recomputed from the saved distance matrices (the class docstring's recipe)."""
    labels, values = saved["labels"], {}
    for layer, m in saved["layers"].items():
        given = m.get("reference", m["teacher"])
        values[f"fss/{layer}"] = correlation_of_distances(m["teacher"], m["student"])
        rows = m.get("teacher_rows", m["teacher"]), m.get("student_rows", m["student"])
        values[f"fss_v/{layer}"] = correlation_of_distances(*rows, bias_corrected=False)
        for model in ("teacher", "student", "reference"):
            if model in m:
                values[f"rs/{model}/{layer}"] = correlation_of_distances(m[model], labels)
        values[f"rs/distilled/{layer}"] = relevance_given_of_distances(m["student"], given, labels)
        values[f"rs/residual/{layer}"] = relevance_given_of_distances(given, m["student"], labels)
    return {key: float(value) for key, value in values.items()}


@pytest.mark.parametrize(
    "options",
    [
        dict(features="flattened", normalize_rows=True, with_reference=True),
        dict(features="pooled", normalize_rows=False, with_reference=False),
    ],
)
def test_saved_distances_reproduce_every_score(tmp_path: Path, options: dict) -> None:
    data = tiny_data()
    teacher, student = tiny_net(), tiny_net()
    torch.manual_seed(1)
    student.features.conv1.reset_parameters()
    reference = copy.deepcopy(teacher) if options["with_reference"] else None
    if reference is not None:
        reference.features.conv2.reset_parameters()
    features, normalize_rows = options["features"], options["normalize_rows"]
    probe = UniCAMProbe(
        data,
        layers=PAIRS,
        cam_layer="features.relu2",
        reference=reference,
        features=features,
        normalize_rows=normalize_rows,
    )
    assert probe.state_dict()["distances"] is None  # before the first probe
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[probe]).fit(
        DistillationModule(student, teacher), datamodule=data
    )
    saved = torch.load(Path(logger.log_dir) / "kd_probe_unicam.pt", weights_only=True)
    assert saved["features"] == features and saved["normalize_rows"] is normalize_rows
    distances, last = saved["distances"], saved["entries"][-1]
    assert distances["epoch"] == last["epoch"] == 1
    assert distances["labels"].shape == (6, 6) and distances["labels"].dtype == torch.float64
    expected_keys = {"teacher", "student"} | ({"reference"} if reference is not None else set())
    expected_keys |= {"teacher_rows", "student_rows"} if normalize_rows else set()
    for layer in ("features.relu1", "features.relu2"):
        assert set(distances["layers"][layer]) == expected_keys
        assert all(m.dtype == torch.float64 and m.device.type == "cpu" for m in distances["layers"][layer].values())
    scores = {key: value for key, value in last.items() if "/" in key}
    kinds = ["fss", "fss_v", "rs/teacher", "rs/student", "rs/distilled", "rs/residual"]
    kinds += ["rs/reference"] if reference is not None else []
    assert set(scores) == {f"{kind}/{layer}" for kind in kinds for layer in ("features.relu1", "features.relu2")}
    assert _reproduce(last, distances) == scores  # exactly: the probe computes its scores from these matrices
    # and the matrices are those of the features as used (pooled or flattened, rows normalised or not)
    images, labels = probe.images, probe.labels
    for layer in ("features.relu1", "features.relu2"):
        fs = layer_features(student, layer, images, features=features)
        ft = layer_features(teacher, layer, images, features=features)
        given = ft if reference is None else layer_features(reference, layer, images, features=features)
        assert scores[f"fss/{layer}"] == pytest.approx(float(distance_correlation(ft, fs)), abs=1e-6)
        fss_v = distance_correlation(ft, fs, bias_corrected=False, normalize_rows=normalize_rows)
        assert scores[f"fss_v/{layer}"] == pytest.approx(float(fss_v), abs=1e-6)
        assert scores[f"rs/distilled/{layer}"] == pytest.approx(float(relevance_given(fs, given, labels)), abs=1e-6)
    restored = UniCAMProbe(
        data,
        layers=PAIRS,
        cam_layer="features.relu2",
        reference=reference,
        features=features,
        normalize_rows=normalize_rows,
    )
    restored.load_state_dict(probe.state_dict())
    assert restored.distances is not None and restored.distances["epoch"] == 1
    assert torch.equal(restored.distances["labels"], distances["labels"])


def test_teacher_side_cached_training_unchanged_and_resume(tmp_path: Path) -> None:
    data = tiny_data()
    plain, probed = DistillationModule(tiny_net(), tiny_net()), DistillationModule(tiny_net(), tiny_net())
    torch.manual_seed(7)
    trainer(tmp_path / "a", max_epochs=2).fit(plain, datamodule=data)
    torch.manual_seed(7)
    probe = UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2")
    trainer(tmp_path / "b", max_epochs=2, callbacks=[probe]).fit(probed, datamodule=data)
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    cache = probe._cache
    probe.probe(trainer(tmp_path, max_epochs=1), probed, 9)
    assert probe._cache is cache  # teacher-side features computed once
    restored = UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2")
    restored.load_state_dict(probe.state_dict())
    assert [e["epoch"] for e in restored.history] == [0, 1, 2, 9] and len(restored.maps) == 4
    calls = []
    restored.probe = lambda *args: calls.append(args)  # type: ignore[method-assign]
    trainer(tmp_path / "c", max_epochs=2, callbacks=[restored]).fit(probed, datamodule=data)
    assert calls == []  # epochs already probed are not probed again


def test_a_teacher_given_as_a_module_probes_a_baseline(tmp_path: Path) -> None:
    data = tiny_data()
    probe = UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2", teacher=tiny_net())
    trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)
    assert len(probe.history) == 2 and all("failed" not in e for e in probe.history)


class _BreakAtEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.student.features.conv1.weight.fill_(float("nan"))


def test_a_failed_probe_warns_and_keeps_the_history(tmp_path: Path) -> None:
    data = tiny_data()
    probe = UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2")
    with pytest.warns(
        UserWarning,
        match=r"the UniCAM probe at epoch 2 failed \(FloatingPointError: the student's features at 'features.relu1' hold NaN",
    ):
        trainer(tmp_path, max_epochs=3, callbacks=[_BreakAtEpoch(), probe]).fit(
            DistillationModule(tiny_net(), tiny_net()), datamodule=data
        )
    assert [("failed" in e) for e in probe.history] == [False, False, True, True]
    assert "fss/features.relu2" in probe.history[1]
    assert probe.distances is not None and probe.distances["epoch"] == 1  # the failed probes kept the last matrices
    saved = torch.load(Path(tmp_path) / "kd_probe_unicam.pt", weights_only=True)
    assert saved["distances"]["epoch"] == 1


def test_bad_input_is_refused(tmp_path: Path) -> None:
    data = tiny_data()
    images = torch.randn(6, 3, 16, 16)
    with pytest.raises(ValueError, match=r"`images` holds 3 probe images; .* needs at least 4"):
        UniCAMProbe(images[:3], torch.tensor([0, 1, 2]), layers=PAIRS, cam_layer="features.relu2")
    with pytest.raises(ValueError, match=r"`labels` hold a single class \(2\); RS .* at least two"):
        UniCAMProbe(images, torch.full((6,), 2), layers=PAIRS, cam_layer="features.relu2")
    with pytest.raises(ValueError, match=r"`layers` items must be layer names or \(student layer, teacher layer\)"):
        UniCAMProbe(data, layers=[("a", "b", "c")], cam_layer="features.relu2")
    with pytest.raises(ValueError, match=r"`layers` must name at least one"):
        UniCAMProbe(data, layers=[], cam_layer="features.relu2")
    with pytest.raises(ValueError, match=r"`objective` must be one of"):
        UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2", objective="max")
    with pytest.raises(ValueError, match=r"`features` must be 'pooled' .* or 'flattened' .*, got 'mean'\."):
        UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2", features="mean")
    with pytest.raises(ValueError, match=r"`normalize_rows` must be True or False, got 'yes'\."):
        UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2", normalize_rows="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`labels` holds class 2 but `label_embeddings` has 2 rows"):
        UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2", label_embeddings=torch.randn(2, 4))
    probe = UniCAMProbe(data, layers=[("features.relu2", "features.relu9")], cam_layer="features.relu2")
    with pytest.raises(ValueError, match=r"`layers`='features.relu9' is not a module of VGG; close matches"):
        trainer(tmp_path, callbacks=[probe]).fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data)
    probe = UniCAMProbe(data, layers=PAIRS, cam_layer="head.fc")
    with pytest.raises(
        ValueError, match=r"`cam_layer`='head.fc' outputs shape \(1, 3\); a class-activation map needs a feature map"
    ):
        trainer(tmp_path, callbacks=[probe]).fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data)
    probe = UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2")
    with pytest.raises(ValueError, match=r"`teacher`='teacher' is not a module attribute of DistillationModule"):
        trainer(tmp_path, callbacks=[probe]).fit(DistillationModule(tiny_net()), datamodule=data)


@pytest.mark.slow
def test_runs_sharded_under_ddp_and_rank_zero_logs_and_writes_once(tmp_path: Path) -> None:
    data = tiny_data()
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    probe = UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2")
    trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[probe], strategy="ddp_spawn", devices=2).fit(
        DistillationModule(tiny_net(), tiny_net()), datamodule=data
    )
    saved = torch.load(tmp_path / "run" / "version_0" / "kd_probe_unicam.pt", weights_only=True)
    assert [e["epoch"] for e in saved["entries"]] == [0, 1, 2]  # once per epoch, not once per process
    assert all("failed" not in e for e in saved["entries"])
    # each rank computed the maps of its images, gathered: every image has its maps, the batch its distances
    assert all(m["distilled"].shape == m["residual"].shape == (6, 16, 16) for m in saved["maps"])
    assert saved["distances"]["layers"]["features.relu2"]["student"].shape == (6, 6)
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert len(events.Scalars("4_unicam/fss/features.relu2")) == 3  # logged by one process
    assert len(events.Images("4_unicam/distilled")) == 3
