"""What ``kd-probe demo`` prints after training: the accuracies, the verdicts (their warnings first), a few key
numbers and where report.md is — never the report's Markdown. Printed from a report on tiny runs."""

import json
import shutil
from pathlib import Path

import pytest

from kd_probe.apps.demo.run import DemoResult, RunResult, report
from kd_probe.apps.options import QUICK_NOTE
from kd_probe.apps.report.write import Digest, write_report
from tests.test_report_why import _set_last_counts, build_tiny_runs


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two healthy runs: 90 % test accuracy of 3 classes, foreground knowledge points at the end."""
    folder = build_tiny_runs(tmp_path_factory.mktemp("console"))
    for role in ("distilled", "baseline"):
        _set_last_counts(folder / role, n_fg=2, n_bg=1)
    return folder


def _printed(folder: Path, capsys: pytest.CaptureFixture) -> tuple[str, Path]:
    """The demo's console after a report on ``folder``'s runs."""
    digest = Digest()
    path, text = write_report([folder], folder, resamples=200, note=QUICK_NOTE, digest=digest)
    runs = [RunResult(role, role, 0, 0.9, folder / role) for role in ("distilled", "baseline")]
    result = DemoResult(runs, folder, 12.0, path, text, 3.0, "image", QUICK_NOTE, digest=digest)
    capsys.readouterr()
    report(result)
    return capsys.readouterr().out, path


def test_the_console_prints_the_verdicts_then_the_key_numbers_then_the_path(
    tiny_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = Path(shutil.copytree(tiny_runs, tmp_path / "e"))
    out, path = _printed(folder, capsys)
    lines = out.splitlines()
    order = [
        "Test accuracy on the built-in shapes data",
        QUICK_NOTE,
        "The paper's hypotheses:",
        "  H1 (more foreground knowledge points and a higher foreground ratio): about distillation, no verdict",
        "  H2 (lower D_mean and D_std): ",
        "  H3 (higher stability ρ): ",
        "Key numbers (distilled vs baseline, all probe images; differences of these runs):",
        "  N_fg ",
        "  agreement with the teacher: CAM cosine ",
        "  UniCAM: FSS at features.relu2 ",
        f"Full report: {path}",
        f"Figures: curves.png, maps.png, unicam.png in {folder}",
        "Done in 12 s (3 s of it in the knowledge-point probes). Watch the curves with:",
    ]
    found = [next(i for i, line in enumerate(lines) if line.startswith(start)) for start in order]
    assert found == sorted(found), out
    assert not [line for line in lines if line.lstrip().startswith(("|", "#", "- **", "**"))], out  # no Markdown
    assert len(lines) <= 30, out
    assert "Warning" not in out  # 90 % with 3 classes


def test_warnings_come_first_among_the_verdicts(tiny_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = Path(shutil.copytree(tiny_runs, tmp_path / "e"))
    for role in ("distilled", "baseline"):
        run_file = folder / role / "kd_probe_run.json"
        run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "test_accuracy": 0.3}))
    out, _ = _printed(folder, capsys)
    verdicts = out.split("The paper's hypotheses:\n", 1)[1].splitlines()
    assert verdicts[0] == (
        "  Warning: distilled (30.0%) and baseline (30.0%) are within 5 points of chance (33.3% with 3 classes): the "
        "knowledge points of a near-chance network say little about distillation; train longer, or on more data, "
        "before reading the verdicts."
    )
    first = next(i for i, line in enumerate(verdicts) if line.startswith("  H1 "))
    assert first == 1 and verdicts[first + 2].startswith("  H3 ")
