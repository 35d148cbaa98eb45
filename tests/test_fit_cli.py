"""``kd-probe fit|validate|test``: LightningCLI over kd_probe, the example configs of ``examples/``, and the probe sets
a YAML file can name (``images: datamodule`` and a saved tensor file)."""

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, UniCAMProbe
from kd_probe.apps.lightning_cli import main
from kd_probe.models import VGG, load_weights
from tests.callbacks.conftest import PROBE, tiny_data, tiny_net, trainer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# the examples' settings, on tiny data: one epoch of one or two batches, 16 px images, 6 probe images
TINY = [
    *("--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
    *("--data.train_size", "64", "--data.val_size", "16", "--data.test_size", "16", "--data.probe_size", "6"),
    *("--data.image_size", "16", "--data.batch_size", "32"),
]
KNOWLEDGE_POINTS = ["1_knowledge_points/n_fg", "1_knowledge_points/fg_ratio", "2_learning_stability/rho"]
WEIGHTS = ["6_weights/features/step_length", "6_weights/head/path_efficiency"]
AGREEMENT = ["3_agreement/cam_cosine", "3_agreement/teacher_fooling_rate/eps_8"]
UNICAM = ["4_unicam/fss/features.relu6", "4_unicam/rs/distilled/features.relu6", "4_unicam/rs/residual/features.relu2"]


@pytest.fixture(autouse=True)
def _command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["kd-probe"])  # LightningCLI warns when pytest's own arguments are there too


def fit(config: str, *options: str) -> None:
    assert main(["fit", "--config", str(EXAMPLES / config), *TINY, *options]) == 0


def tags(run: Path) -> dict[str, list[str]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    return events.Tags()


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/teacher.yaml on tiny data: the checkpoint every other example names."""
    folder = tmp_path_factory.mktemp("teacher")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["kd-probe"])
        fit("teacher.yaml")
    assert {"val/acc", "val/loss"} <= set(tags(folder / "runs/examples/teacher")["scalars"])
    return folder / "runs/examples/checkpoints/teacher.ckpt"


def test_print_config_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    for option in (
        "student:\n    class_path: kd_probe.models.VGG",
        "teacher_checkpoint: null",
        "student_checkpoint: null",
        "temperature: 4.0",
        "feature_pairs: null",
        "stage: distill",
        "class_path: kd_probe.ShapesDataModule",
        "probe_size: 64",
        "callbacks: null",
        "max_epochs: null",
        "seed_everything: 0",
    ):
        assert option in printed, option


def test_print_config_of_an_example_shows_each_probes_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(EXAMPLES / "hinton.yaml"), "--data.probe_size", "8", "--print_config"])
    printed = capsys.readouterr().out
    for option in (
        "class_path: kd_probe.KnowledgePointProbe",
        "images: datamodule",
        "method: secant",  # KnowledgePointProbe's σ options (its **sigma_options) are options too
        "passes: 2",
        "patience: 3",
        "class_path: kd_probe.AgreementProbe",
        "teacher_layer: features.relu6",
        "class_path: kd_probe.UniCAMProbe",
        "cam_layer: features.relu6",
        "class_path: kd_probe.WeightTrajectoryMonitor",
        "teacher_checkpoint: runs/examples/checkpoints/teacher.ckpt",
        "probe_size: 8",
    ):
        assert option in printed, option


def test_the_configuration_page_config_is_a_valid_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = (EXAMPLES.parent / "docs" / "configuration.md").read_text(encoding="utf-8")
    block = page.split("<!-- yaml-config", 1)[1].split("```yaml\n", 1)[1].split("\n```", 1)[0]
    (tmp_path / "run.yaml").write_text(block, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(tmp_path / "run.yaml"), "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert (
        printed.count("images: datamodule") == 3
        and "teacher_checkpoint: runs/examples/checkpoints/teacher.ckpt" in printed
    )


def test_python_m_kd_probe_runs_the_lightning_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kd_probe", "fit", "--config", str(EXAMPLES / "baseline.yaml"), "--print_config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "class_path: kd_probe.KnowledgePointProbe" in done.stdout and "teacher: null" in done.stdout


def test_a_missing_teacher_checkpoint_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["fit", "--config", str(EXAMPLES / "hinton.yaml"), "--model.teacher_checkpoint", "no/teacher.ckpt"]) == 2
    )
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith(
        "kd-probe fit: error: `teacher_checkpoint`: there is no checkpoint file at 'no/teacher.ckpt'"
    )
    assert not Path("runs").exists()  # refused before anything was written


def test_a_teacher_checkpoint_of_another_architecture_names_the_difference(
    teacher_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ["--model.teacher_checkpoint", str(teacher_checkpoint), "--model.teacher.init_args.widths", "[8, 16, 32]"]
    assert main(["fit", "--config", str(EXAMPLES / "hinton.yaml"), *options]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"`teacher_checkpoint`={str(teacher_checkpoint)!r} does not hold the weights of this VGG" in error
    assert "'features.conv1.weight' is (32, 3, 3, 3) in the file but (8, 3, 3, 3) here" in error


@pytest.mark.slow
def test_the_teacher_example_trains_the_teacher_the_others_load(teacher_checkpoint: Path) -> None:
    record = torch.load(teacher_checkpoint, weights_only=True)
    teacher = load_weights(VGG(6, widths=(32, 64, 128)), teacher_checkpoint)
    assert torch.equal(teacher.features.conv1.weight, record["state_dict"]["student.features.conv1.weight"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "run", "scalars", "images"),
    [
        ("hinton.yaml", "distilled", [*KNOWLEDGE_POINTS, *WEIGHTS, *AGREEMENT, *UNICAM, "val/loss_kd"], ["1_knowledge_points/maps", "3_agreement/cams", "4_unicam/residual"]),
        ("feature_kd.yaml", "distilled_features", [*KNOWLEDGE_POINTS, "1_knowledge_points/bn4/n_fg", "val/loss_feature"], ["1_knowledge_points/maps", "1_knowledge_points/bn4/maps"]),
        ("baseline.yaml", "baseline", [*KNOWLEDGE_POINTS, *WEIGHTS, "val/acc"], ["1_knowledge_points/maps"]),
        ("probes.yaml", "distilled_probes", [*KNOWLEDGE_POINTS, *WEIGHTS, *AGREEMENT, *UNICAM, "1_knowledge_points/teacher/n_fg"], ["1_knowledge_points/teacher/maps", "4_unicam/distilled"]),
    ],
)  # fmt: skip
def test_each_example_runs_and_logs_its_probes(
    config: str, run: str, scalars: list[str], images: list[str], teacher_checkpoint: Path
) -> None:
    fit(config, *(["--model.teacher_checkpoint", str(teacher_checkpoint)] if config != "baseline.yaml" else []))
    logged = tags(Path("runs/examples") / run)
    assert set(scalars) <= set(logged["scalars"]), sorted(set(scalars) - set(logged["scalars"]))
    assert set(images) <= set(logged["images"]), sorted(set(images) - set(logged["images"]))
    if config == "baseline.yaml":
        assert not any("agreement" in tag or "fss" in tag for tag in logged["scalars"])
    history = torch.load(Path("runs/examples") / run / "kd_probe_history.pt", weights_only=True)
    assert [entry["epoch"] for entry in history["entries"]] == [0, 1] and history["settings"]["method"] == "secant"


@pytest.mark.slow
def test_the_two_phase_examples_mimic_then_train_the_head_of_the_same_student(teacher_checkpoint: Path) -> None:
    fit("paper_two_phase.yaml", "--model.teacher_checkpoint", str(teacher_checkpoint))
    mimic = tags(Path("runs/examples/distilled_paper"))["scalars"]
    assert {"val/loss_feature", *KNOWLEDGE_POINTS, "4_unicam/fss/features.relu6"} <= set(mimic)
    assert "val/acc" not in mimic  # phase 1 learns no labels
    student = Path("runs/examples/checkpoints/mimic.ckpt")
    fit("paper_two_phase_head.yaml", "--model.teacher_checkpoint", str(teacher_checkpoint))
    head = tags(Path("runs/examples/distilled_paper/head"))["scalars"]
    assert {"val/loss_ce", "val/acc", *AGREEMENT} <= set(head)
    mimicked = load_weights(VGG(6, widths=(32, 64, 128)), student)
    trained = torch.load(next(Path("runs/examples/distilled_paper/head/checkpoints").glob("*.ckpt")), weights_only=True)
    weights = trained["state_dict"]
    assert torch.equal(weights["student.features.conv6.weight"], mimicked.features.conv6.weight)  # frozen
    assert not torch.equal(weights["student.head.fc.weight"], mimicked.head.fc.weight)  # trained with labels


@pytest.mark.slow
def test_test_and_validate_log_into_the_training_run_folder() -> None:
    fit("baseline.yaml")
    run = Path("runs/examples/baseline")
    (checkpoint,) = (run / "checkpoints").glob("*.ckpt")
    assert main(["test", "--config", str(EXAMPLES / "baseline.yaml"), *TINY, "--ckpt_path", str(checkpoint)]) == 0
    assert "test/acc" in tags(run)["scalars"]  # beside the probes: `kd-probe report` reads it
    assert main(["validate", "--config", str(EXAMPLES / "baseline.yaml"), *TINY, "--trainer.logger", "false"]) == 0
    assert sorted(path.name for path in Path.cwd().iterdir()) == ["runs"]  # no config.yaml outside the run folder


def _fit_with_probe_sets(root: Path, source: object) -> list[list[dict]]:
    """The three images-probes of one tiny distillation run, all given ``source`` as their probe set."""
    data = tiny_data()
    pl.seed_everything(0, verbose=False)
    teacher, student = tiny_net(), VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)
    probes = [
        KnowledgePointProbe(source, layer="features.bn2", **PROBE),
        AgreementProbe(source, teacher_layer="features.relu2", student_layer="features.relu2", eps=0.3),
        UniCAMProbe(source, layers=["features.relu1", "features.relu2"], cam_layer="features.relu2"),
    ]
    trainer(root, max_epochs=1, callbacks=probes).fit(DistillationModule(student, teacher), datamodule=data)
    return [probe.history for probe in probes]


def _same(first: object, second: object) -> bool:
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_same(first[k], second[k]) for k in first)
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second, strict=True))
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        return torch.equal(first, second) or bool(torch.isclose(first, second, equal_nan=True).all())
    return first == second or (first != first and second != second)  # NaN == NaN here


def test_images_datamodule_and_a_probe_file_give_the_python_objects_history(tmp_path: Path) -> None:
    data = tiny_data()
    images, labels, masks = (torch.stack([torch.as_tensor(item[i]) for item in data.probe_set]) for i in range(3))
    path = tmp_path / "probe_set.pt"
    torch.save({"images": images, "labels": labels, "masks": masks, "mean": data.mean, "std": data.std}, path)
    given = _fit_with_probe_sets(tmp_path / "object", data)
    from_trainer = _fit_with_probe_sets(tmp_path / "trainer", "datamodule")
    from_file = _fit_with_probe_sets(tmp_path / "file", str(path))
    for histories in (from_trainer, from_file):
        for expected, history in zip(given, histories, strict=True):
            assert [entry["epoch"] for entry in history] == [0, 1]
            timeless = [{k: v for k, v in e.items() if "seconds" not in k} for e in history]
            assert _same(timeless, [{k: v for k, v in e.items() if "seconds" not in k} for e in expected])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "method"), [("kd_dkd.yaml", "dkd"), ("kd_at.yaml", "at"), ("kd_rkd.yaml", "rkd"), ("kd_crd.yaml", "crd")]
)
def test_each_kd_method_example_trains_with_its_method(config: str, method: str, teacher_checkpoint: Path) -> None:
    """One example per family of kd_probe.losses: `model.losses` as a list of class_path entries."""
    fit(config, "--model.teacher_checkpoint", str(teacher_checkpoint), "--trainer.log_every_n_steps", "1")
    logged = set(tags(Path("runs/examples") / f"distilled_{method}")["scalars"])
    assert {f"train/loss_{method}", "train/loss_ce", *KNOWLEDGE_POINTS} <= logged, sorted(logged)
    assert "train/loss_kd" not in logged  # the method replaces Hinton's KD
