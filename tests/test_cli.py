"""The ``kd-probe`` command's own behaviour: a fast ``--help`` that imports no torch, and every mistake one
sentence on stderr with exit status 2 and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kd_probe.apps.cli import main
from kd_probe.apps.options import MAX_CLASSES, QUICK_NOTE, RESAMPLES
from tests.test_report_files import runs, tiny_runs  # noqa: F401  (fixtures)

HINT = "(kd-probe demo --help lists the options)"


def test_the_light_constants_match_the_modules_they_stand_for() -> None:
    from kd_probe.core.uncertainty import RESAMPLES as CORE_RESAMPLES
    from kd_probe.data.shapes import SHAPES

    assert MAX_CLASSES == len(SHAPES) == 8
    assert RESAMPLES == CORE_RESAMPLES


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["report", "--help"], ["demo", "--seeds", "0"]])
def test_help_and_mistakes_import_no_torch(argv: list[str]) -> None:
    code = (
        "import sys\nfrom kd_probe.apps.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('heavy:', sorted({'torch', 'lightning'} & set(sys.modules)), file=sys.stderr)"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert done.stderr.splitlines()[-1] == "heavy: []", done.stderr
    assert seconds < 3.0, f"{argv} took {seconds:.1f} s"


def test_a_mistake_in_a_subprocess_is_one_line_without_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kd_probe", "demo", "--num-classes", "12"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"kd-probe demo: error: argument --num-classes: expected an integer from 2 to 8 (one class per built-in "
        f"shape), got 12 {HINT}"
    ]


def test_version_still_answers(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip().startswith("kd_probe ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--num-classes", "12"],
            "argument --num-classes: expected an integer from 2 to 8 (one class per built-in shape), got 12",
        ),
        (
            ["--num-classes", "1"],
            "argument --num-classes: expected an integer from 2 to 8 (one class per built-in shape), got 1",
        ),
        (
            ["--num-classes", "six"],
            "argument --num-classes: expected an integer from 2 to 8 (one class per built-in shape), got six",
        ),
        (
            ["--image-size", "8"],
            "argument --image-size: expected an integer of at least 16 pixels (the σ maps' grid is 16×16), got 8",
        ),
        (["--background-bias", "1.5"], "argument --background-bias: expected a probability from 0 to 1, got 1.5"),
        (["--background-bias", "-0.1"], "argument --background-bias: expected a probability from 0 to 1, got -0.1"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
        (
            ["--method", "faithful", "--passes", "2"],
            "argument --passes: applies to --method secant only, got --method faithful",
        ),
        (
            ["--methods", "kd,nope"],
            "argument --methods: expected all or a comma-separated list of kd, dkd, dist, logit_standard_kd, fitnets, "
            "at, nst, vid, sp, pkt, rkd, cc, crd; got 'kd,nope' ('nope' is not a KD method)",
        ),
        (["--methods", "kd,dkd,kd"], "argument --methods: expected each KD method once, got 'kd,dkd,kd' (kd twice)"),
        (
            ["--methods", "kd,dkd", "--kd-method", "at"],
            "argument --methods: not allowed with --kd-method at (--methods names every distilled student's method; "
            "add it to the list)",
        ),
        (
            ["--methods", "kd,dkd", "--protocol", "paper"],
            "argument --methods: applies to --protocol hinton (paper's protocol is its own method)",
        ),
        (
            ["--methods", "kd,at", "--modality", "text"],
            "argument --methods: at matches feature maps, which --modality text has not; use logit, relation or "
            "contrastive methods (--methods all leaves feature methods out there)",
        ),
        (["--devices", "0"], "argument --devices: expected auto or a positive integer, got 0"),
        (["--devices", "two"], "argument --devices: expected auto or a positive integer, got two"),
    ],
)
def test_a_demo_mistake_is_one_sentence_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"kd-probe demo: error: {message} {HINT}"]


def test_report_on_a_missing_folder_differs_from_an_empty_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing"
    assert main(["report", str(missing)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"kd-probe report: no such folder: {missing}"]
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"kd-probe report: no run with a kd_probe_summary.json in {tmp_path}; run a KnowledgePointProbe "
        "(or `kd-probe demo`) first."
    ]


@pytest.mark.parametrize("role", ["distilled", "baseline"])
def test_report_of_one_group_needs_both(runs: Path, role: str, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    assert main(["report", str(runs / role), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"kd-probe report: a comparison needs both a distilled and a baseline run; {runs / role} holds only "
        f"{role} runs ({role})."
    ]
    assert not (runs / role / "report.md").exists()


def test_report_skips_hidden_folders_venvs_and_stray_summaries(runs: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    for folder in (".venv", ".venv/x", "site-packages", "env", "other"):
        (runs / folder).mkdir(parents=True, exist_ok=True)
        (runs / folder / "kd_probe_summary.json").write_text("[]")
    (runs / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert main(["report", str(runs), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"kd-probe report: {runs / 'other'} is not a run: its kd_probe_summary.json was not written by kd_probe."
    ]
    report = (runs / "report.md").read_text()
    assert "## Left out" not in report and "| distilled | distilled |" in report and "| baseline | baseline |" in report


def test_the_quick_note_heads_the_report(runs: Path, tmp_path: Path) -> None:  # noqa: F811
    from kd_probe.apps.report.write import write_report

    _, text = write_report([runs], tmp_path, figures=False, resamples=100, note=QUICK_NOTE)
    assert text.splitlines()[:3] == ["# kd_probe report", "", QUICK_NOTE]
    assert "chance level" in QUICK_NOTE


def test_a_summary_not_written_by_kd_probe_is_not_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "kd_probe_summary.json").write_text(json.dumps({"accuracy": 1.0}))
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"kd-probe report: {tmp_path / 'other'} is not a run: its kd_probe_summary.json was not written by kd_probe.",
        f"kd-probe report: no run with a kd_probe_summary.json in {tmp_path}; run a KnowledgePointProbe "
        "(or `kd-probe demo`) first.",
    ]
