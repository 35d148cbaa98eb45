"""``kd-probe report`` on folders others send: every hostile file leaves its run out with one line naming the file
and the reason, before anything unbounded is read; nothing hangs, nothing raises (kd_probe.io.runs and
kd_probe.io.run_files). The runs are the tiny fits of tests/test_report_files.py, copied per test."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kd_probe.apps.cli import main
from kd_probe.io.paths import inside
from kd_probe.io.run_files import JSON_LIMIT, PT_LIMIT, probe_file
from tests.test_report_files import runs, tiny_runs  # noqa: F401 (fixtures)


def _set(name: str, **values: object) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **values}))

    return change


def _replace(name: str, make: Callable[[Path], object]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        (folder / name).unlink()
        make(folder / name)

    return change


def _sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "wb") as file:
            file.truncate(size)  # sparse: no disk is used

    return make


def _version(name: str, version: object) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        record = torch.load(folder / name, weights_only=True)
        torch.save({**record, "version": version}, folder / name)

    return change


HOSTILE: dict[str, tuple[Callable[[Path], None], str, str]] = {  # change, file named, problem
    "history of another format version": (
        _version("kd_probe_history.pt", 2),
        "kd_probe_history.pt",
        "was written in format version 2; this kd_probe reads version 1.",
    ),
    "unicam file of another format version": (
        _version("kd_probe_unicam.pt", "2.0"),
        "kd_probe_unicam.pt",
        "was written in format version '2.0'; this kd_probe reads version 1.",
    ),
    "summary a named pipe": (_replace("kd_probe_summary.json", os.mkfifo), "kd_probe_summary.json", "is a named pipe"),
    "run file a named pipe": (_replace("kd_probe_run.json", os.mkfifo), "kd_probe_run.json", "is a named pipe"),
    "unicam file a named pipe": (_replace("kd_probe_unicam.pt", os.mkfifo), "kd_probe_unicam.pt", "is a named pipe"),
    "run file a folder": (_replace("kd_probe_run.json", os.mkdir), "kd_probe_run.json", "is a folder, not a regular"),
    "run file far too large": (
        _replace("kd_probe_run.json", _sparse(JSON_LIMIT + 1)),
        "kd_probe_run.json",
        f"is {JSON_LIMIT + 1} bytes, more than a kd_probe file of its kind can be ({JSON_LIMIT}); not read.",
    ),
    "history far too large": (
        _replace("kd_probe_history.pt", _sparse(PT_LIMIT + 1)),
        "kd_probe_history.pt",
        f"is {PT_LIMIT + 1} bytes, more than",
    ),
    "run file a link to a device": (
        _replace("kd_probe_run.json", lambda p: p.symlink_to("/dev/zero")),
        "kd_probe_run.json",
        "is a link outside the run folder",
    ),
    "run file a link loop": (
        _replace("kd_probe_run.json", lambda p: p.symlink_to(p.name)),
        "kd_probe_run.json",
        "is a link outside the run folder",
    ),
    "history name with a NUL byte": (
        _set("kd_probe_summary.json", history_file="a\x00b"),
        "kd_probe_summary.json",
        "names 'a\\x00b', which is not a file name; refused.",
    ),
    "history name of 5000 characters": (
        _set("kd_probe_summary.json", history_file="h" * 5000),
        "hhhhhhhhhh",
        "cannot be opened (OSError: [Errno 36] File name too long",
    ),
    "accuracy of 4200 %": (
        _set("kd_probe_run.json", test_accuracy=42.0),
        "kd_probe_run.json",
        "gives accuracy = 42.0; expected a number in [0.0, 1.0].",
    ),
    "N_fg as text": (_set("kd_probe_summary.json", n_fg="many"), "kd_probe_summary.json", "gives n_fg = 'many'"),
    "ρ a boolean": (_set("kd_probe_summary.json", rho=True), "kd_probe_summary.json", "gives rho = True; expected a"),
    "fg_ratio above 1": (
        _set("kd_probe_summary.json", fg_ratio=1.5),
        "kd_probe_summary.json",
        "gives fg_ratio = 1.5; expected a number in [0.0, 1.0].",
    ),
    "negative D_mean": (_set("kd_probe_summary.json", d_mean=-1), "kd_probe_summary.json", "gives d_mean = -1;"),
    "infinite ρ": (
        _set("kd_probe_summary.json", rho=math.inf),
        "kd_probe_summary.json",
        "is not readable JSON (ValueError: Infinity is not a value a kd_probe file holds).",
    ),
    "run name that is HTML": (
        _set("kd_probe_run.json", run="<img src=x onerror=alert(1)>"),
        "kd_probe_run.json",
        "gives the run '<img src=x onerror=alert(1)>'; expected 1–100 letters, digits, '_', '-' or '.'.",
    ),
    "protocol with a line break": (
        _set("kd_probe_run.json", protocol="hinton\n## Verdict: H1 holds"),
        "kd_probe_run.json",
        "gives the protocol 'hinton\\n## Verdict: H1 holds'; expected",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_file_leaves_its_run_out_with_one_line(runs: Path, case: str, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    change, named, problem = HOSTILE[case]
    change(runs / "distilled")
    assert main(["report", str(runs), "--no-figures"]) == 0
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("kd-probe report: left out ")]
    assert f"left out {runs / 'distilled'}: " in line and named in line and problem in line, line
    assert len(line) < 700, "a long name is shortened"
    report = (runs / "report.md").read_text(encoding="utf-8")
    left_out = report.split("## Left out")[1].split("\n## ")[0]
    assert "<" not in left_out and "\n## Verdict" not in report, "no text from a file becomes markup"
    assert "| distilled | distilled |" not in report and "| baseline | baseline | 0 |" in report


def test_out_naming_an_existing_file_is_one_sentence(runs: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    (runs / "taken").write_text("mine")
    assert main(["report", str(runs), "--no-figures", "--out", str(runs / "taken")]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"kd-probe report: --out {runs / 'taken'} is an existing file; expected a folder (created when missing).\n"
    )
    assert (runs / "taken").read_text() == "mine"


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a\x00b", "a/" * 3000 + "b", ""])
def test_inside_never_raises(tmp_path: Path, relative: str) -> None:
    assert inside(tmp_path, relative) is None or len(relative) > 1000


def test_inside_follows_no_link_loop(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    assert inside(tmp_path, "loop") is None


def test_probe_file_names() -> None:
    assert probe_file("kd_probe_unicam.pt", "s1") == "kd_probe_unicam_s1.pt"
    assert probe_file("kd_probe_unicam.pt", None) == "kd_probe_unicam.pt"


def test_an_unfinished_run_is_reported_and_marked(runs: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    _set("kd_probe_summary.json", finished=False)(runs / "distilled")
    assert main(["report", str(runs), "--no-figures"]) == 0
    report = (runs / "report.md").read_text(encoding="utf-8")
    assert (
        "**Unfinished runs** (training stopped before its end; reported up to their last completed probe): " in report
    )
    assert "distilled (epoch 1)." in report and "| distilled (unfinished) | distilled |" in report
    assert "| baseline | baseline |" in report and "## Left out" not in report


def _settings(**values: object) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / "kd_probe_summary.json"
        summary = json.loads(path.read_text())
        summary["settings"].update(values)
        path.write_text(json.dumps(summary))

    return change


def _probe_settings(name: str, **values: object) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        record = torch.load(folder / name, weights_only=True)
        record["settings"].update(values)
        torch.save(record, folder / name)

    return change


@pytest.mark.parametrize(
    ("change", "what", "values"),
    [
        (_set("kd_probe_summary.json", probe_set="0123456789abcdef"), "probe sets", ("0123456789abcdef", None)),
        (_set("kd_probe_run.json", protocol="paper"), "protocols", ("paper", "hinton")),
        (_settings(method="secant"), "σ methods", ("secant", "faithful")),
        (_probe_settings("kd_probe_agreement.pt", steps=9), "agreement `steps`", ("9", "5")),
        (_probe_settings("kd_probe_agreement.pt", probe_set="ab"), "agreement `probe_set`", ("ab", None)),
        (_probe_settings("kd_probe_unicam.pt", features="flattened"), "UniCAM `features`", ("flattened", "pooled")),
        (_set("kd_probe_summary.json", layer="features.bn1"), "probed layers", ("features.bn1", "features.bn2")),
        (_settings(threshold=0.3), "knowledge-point `threshold`", ("0.3", "0.2")),
        (_settings(samples=8), "knowledge-point `samples`", ("8", "4")),
        (
            _settings(units="tokens of an embedding"),
            "knowledge-point `units`",
            ("tokens of an embedding", "not recorded"),
        ),
    ],
)
def test_runs_that_are_not_comparable_are_refused_naming_what_differs(
    runs: Path,  # noqa: F811
    change: Callable[[Path], None],
    what: str,
    values: tuple[str, str | None],
    capsys: pytest.CaptureFixture,
) -> None:
    change(runs / "distilled")
    assert main(["report", str(runs), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kd-probe report: the runs have different {what} ("), err
    assert f"{values[0]}: {runs / 'distilled'}" in err
    if values[1] is not None:
        assert f"({values[1]}: {runs / 'baseline'}; " in err or f"; {values[1]}: {runs / 'baseline'})" in err
    assert not (runs / "report.md").exists()
    grouped = main(["report", str(runs), "--no-figures", "--group-summaries"])
    err = capsys.readouterr().err
    if what == "protocols":  # never averaged together, whatever the options
        assert grouped == 2 and err.endswith("are never averaged together; report each group's runs on their own.\n")
        return
    assert (
        err.endswith(
            "so they cannot be compared image by image; report each group's runs on their own, or pass "
            "--group-summaries to compare only the groups' summaries (no paired intervals, no verdicts).\n"
        )
        or grouped == 0
    )
    assert grouped == 0, err
    text = (runs / "report.md").read_text()
    assert f"**Group summaries only** (`--group-summaries`): the runs differ in {what} (" in text
    assert "| metric | distilled | baseline | difference of means |" in text
    table = text.split("| metric | distilled | baseline | difference of means |")[1].split("\n\n")[0]
    assert "[" not in table and "Distilled vs baseline: all probe images" not in text  # no paired intervals
    assert "- not judged: `--group-summaries` compares no pairs" in text


def test_the_refusal_names_the_group_summaries_option(runs: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    _set("kd_probe_summary.json", layer="features.bn1")(runs / "distilled")
    assert main(["report", str(runs), "--no-figures"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kd-probe report: the runs have different probed layers (features.bn2: {runs / 'baseline'}; features.bn1: "
        f"{runs / 'distilled'}), so they cannot be compared image by image; report each group's runs on their own, "
        "or pass --group-summaries to compare only the groups' summaries (no paired intervals, no verdicts)."
    )


def test_group_summaries_of_comparable_runs_say_so(runs: Path) -> None:  # noqa: F811
    assert main(["report", str(runs), "--no-figures", "--group-summaries"]) == 0
    text = (runs / "report.md").read_text()
    assert "**Group summaries only** (`--group-summaries`): as asked, although the runs could be paired." in text


def test_a_probe_one_run_did_not_have_is_not_a_difference(runs: Path) -> None:  # noqa: F811
    (runs / "baseline" / "kd_probe_agreement.pt").unlink()
    (runs / "distilled" / "kd_probe_unicam.pt").unlink()
    assert main(["report", str(runs), "--no-figures"]) == 0
