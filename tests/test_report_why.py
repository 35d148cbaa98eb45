"""The report says why: a side that was not probed with a probe gets a sentence instead of an empty table, a zero
difference says whose values are the same, and warnings stand above the verdicts when a run is near chance or
has no foreground knowledge points. Tiny runs (about a second each fit), copied per test."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from kd_probe import DistillationModule
from kd_probe.apps.cli import main
from kd_probe.apps.report.health import health_warnings
from kd_probe.apps.report.sections import agreement_section, comparison_rows, teacher_side
from kd_probe.apps.report.stats import knowledge_point_measures
from kd_probe.apps.report.write import Digest, write_report
from tests.callbacks.conftest import tiny_data, tiny_net, trainer
from tests.test_report import _agreement, _evidence, _history, _run
from tests.test_report_files import tiny_run_probes

PAIRS = [("features.relu1", "features.relu1"), "features.relu2"]


def build_tiny_runs(root: Path) -> Path:
    """``root/e/distilled`` and ``root/e/baseline``: one epoch each with the knowledge-point, UniCAM and agreement
    probes, and a ``kd_probe_run.json`` (protocol hinton, 3 classes, test accuracy 90 %)."""
    data = tiny_data()
    for role in ("distilled", "baseline"):
        probes = tiny_run_probes(data)
        logger = TensorBoardLogger(root / "e", name=role, version="")
        module = DistillationModule(tiny_net(), tiny_net()) if role == "distilled" else DistillationModule(tiny_net())
        trainer(root, max_epochs=1, logger=logger, callbacks=probes).fit(module, datamodule=data)
        info = {"run": role, "role": role, "seed": 0, "protocol": "hinton", "test_accuracy": 0.9, "num_classes": 3}
        (root / "e" / role / "kd_probe_run.json").write_text(json.dumps(info))
    return root / "e"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_runs(tmp_path_factory.mktemp("why"))


@pytest.fixture
def runs(tiny_runs: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny experiment folder, both runs with foreground knowledge points at the end."""
    copied = Path(shutil.copytree(tiny_runs, tmp_path / "e"))
    for role in ("distilled", "baseline"):
        _set_last_counts(copied / role, n_fg=2, n_bg=1)
    return copied


def _set_last_counts(run: Path, n_fg: int, n_bg: int) -> None:
    """Make the last probe's knowledge-point counts ``n_fg`` and ``n_bg`` on every image."""
    path = run / "kd_probe_history.pt"
    history = torch.load(path, weights_only=True)
    last = history["entries"][-1]
    last["n_fg"], last["n_bg"] = torch.full_like(last["n_fg"], n_fg), torch.full_like(last["n_bg"], n_bg)
    last["effective"] = torch.ones_like(last["effective"])
    torch.save(history, path)


def _set(path: Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _report(runs: Path) -> str:
    write_report([runs], runs, figures=False, resamples=200)
    return (runs / "report.md").read_text()


def _hypotheses(report: str) -> list[str]:
    """The section's lines up to the first verdict."""
    lines = report.split("## The paper's hypotheses\n", 1)[1].splitlines()
    return lines[: next(i for i, line in enumerate(lines) if line.startswith("- **H1**"))]


def test_a_baseline_without_agreement_and_unicam_files_gets_a_sentence_not_an_empty_table(runs: Path) -> None:
    for name in ("kd_probe_agreement.pt", "kd_probe_unicam.pt"):
        (runs / "baseline" / name).unlink()
    report = _report(runs)
    for title, probe, purpose in (
        ("## Agreement with the teacher", "an AgreementProbe", "agreement with the teacher"),
        ("## What the student holds of the teacher", "a UniCAMProbe", "what the students hold of the teacher"),
    ):
        section = report.split(title, 1)[1].split("\n## ", 1)[0]
        assert (
            f"The baseline run (baseline) was not probed with {probe}, so there is nothing to compare; add one to its "
            f"Trainer to compare {purpose}."
        ) in section
        assert "| these runs: distilled − baseline |" not in section  # no comparison table, empty or not
        assert "The distilled run's own values, without a comparison:" in section
        rows = [line for line in section.splitlines() if line.startswith("| ") and "measure" not in line]
        assert rows and all(line.count(" | ") == 1 for line in rows)  # the distilled run's values only


def test_runs_without_any_agreement_or_unicam_file_have_no_such_section(runs: Path) -> None:
    for role in ("distilled", "baseline"):
        for name in ("kd_probe_agreement.pt", "kd_probe_unicam.pt"):
            (runs / role / name).unlink()
    report = _report(runs)
    assert "## What the student holds" not in report and "not probed" not in report
    # as before: at most the logged scalars of older runs, never a per-image comparison
    assert "## Agreement with the teacher (what gets distilled, last probe)\n" not in report


def test_a_zero_difference_names_whose_values_are_the_same() -> None:
    distilled, baseline = _run("distilled", 0, _history(8, 1, 0)), _run("baseline", 0, _history(8, 1, 0))
    distilled.agreement, baseline.agreement = _agreement(12, 2), _agreement(12, 2)
    evidence = _evidence([distilled], [baseline])
    measures = ([knowledge_point_measures(distilled.history)], [knowledge_point_measures(baseline.history)])
    rows = {row[0]: row[3] for row in comparison_rows(evidence, measures, [("n_fg", "N_fg"), ("d_mean", "D_mean")])}
    assert rows == {"N_fg": "0 (the same values in both runs)", "D_mean": "0 (the same values in both runs)"}
    text = "\n".join(agreement_section(evidence))
    assert "| CAM cosine | 0.75 [" in text and "| 0 (the same values in both runs) |" in text
    fooled = next(line for line in text.splitlines() if line.startswith("| teacher fooled, ε = 1/255"))
    assert "| 0 (the same values: the teacher's side) |" in fooled
    assert teacher_side("rs/teacher/features.relu2") and teacher_side("invariance/color/teacher")
    assert not teacher_side("rs/student/features.relu2") and not teacher_side("cam_cosine")


def test_a_near_chance_run_gets_a_warning_above_the_verdicts(runs: Path) -> None:
    _set(runs / "baseline" / "kd_probe_run.json", test_accuracy=0.35)  # chance with 3 classes: 33.3 %
    digest = Digest()
    write_report([runs], runs, figures=False, resamples=200, digest=digest)
    (warning,) = [line for line in _hypotheses((runs / "report.md").read_text()) if line]
    assert warning == (
        "**Warning:** baseline (35.0%) is within 5 points of chance (33.3% with 3 classes): the knowledge points of "
        "a near-chance network say little about distillation; train longer, or on more data, before reading the "
        "verdicts."
    )
    assert digest.warnings == [warning.removeprefix("**Warning:** ")]


def test_without_num_classes_chance_comes_from_the_agreement_labels_or_is_not_checked(runs: Path) -> None:
    labels = torch.load(runs / "baseline" / "kd_probe_agreement.pt", weights_only=True)["labels"]
    classes = int(labels.unique().numel())
    for role in ("distilled", "baseline"):
        info = json.loads((runs / role / "kd_probe_run.json").read_text())
        del info["num_classes"]
        (runs / role / "kd_probe_run.json").write_text(json.dumps({**info, "test_accuracy": 1 / classes}))
    (runs / "distilled" / "kd_probe_agreement.pt").unlink()
    (warning,) = [line for line in _hypotheses(_report(runs)) if line]
    assert warning.startswith(f"**Warning:** baseline ({1 / classes:.1%}) is within 5 points of chance (")
    assert f"with {classes} classes)" in warning  # the distilled run, with no agreement file, is not checked


def test_a_run_without_foreground_knowledge_points_gets_a_warning_above_the_verdicts(runs: Path) -> None:
    _set_last_counts(runs / "distilled", n_fg=0, n_bg=3)
    _set_last_counts(runs / "baseline", n_fg=0, n_bg=0)
    (warning,) = [line for line in _hypotheses(_report(runs)) if line]
    assert warning.startswith(
        "**Warning:** distilled has fg_ratio 0 (< 0.02) and baseline has no knowledge point at the last checkpoint"
    )
    assert all(what in warning for what in ("`layer`", "`lam`", "`threshold`", "train longer"))


def test_a_healthy_pair_gets_no_warning(runs: Path) -> None:
    report = _report(runs)
    assert "Warning" not in report
    assert [line for line in _hypotheses(report) if line] == []


def test_healthy_runs_in_memory_get_no_warning_and_near_chance_ones_do() -> None:
    runs = [_run("distilled", 0, _history(8, 1, 0)), _run("baseline", 0, _history(8, 1, 1))]
    measures = [knowledge_point_measures(run.history) for run in runs]
    assert all(m["fg_ratio"].estimate > 0.02 for m in measures)
    for run in runs:
        run.metrics["accuracy"], run.num_classes = 0.9, 10
    assert health_warnings(runs, measures) == []
    runs[0].metrics["accuracy"] = 0.12
    assert health_warnings(runs, measures)[0].startswith(
        "distilled-s0 (12.0%) is within 5 points of chance (10.0% with 10 classes)"
    )
    runs[0].metrics["accuracy"] = math.nan  # no accuracy recorded: no check
    assert health_warnings(runs, measures) == []


@pytest.mark.parametrize("classes", [0, -3, "6", 2.5, True, [6]])
def test_a_bad_num_classes_leaves_its_run_out_with_one_sentence_naming_the_file(
    runs: Path, classes: object, capsys: pytest.CaptureFixture
) -> None:
    run_file = runs / "baseline" / "kd_probe_run.json"
    _set(run_file, num_classes=classes)
    assert main(["report", str(runs), "--no-figures", "--resamples", "100"]) == 0
    left_out = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kd-probe report: left out")]
    assert left_out == [
        f"kd-probe report: left out {runs / 'baseline'}: {run_file} gives the num_classes {classes!r}; expected a "
        "positive integer."
    ]
    assert "| baseline | baseline |" not in (runs / "report.md").read_text()
