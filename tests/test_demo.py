import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from torch import nn

from kd_probe import __version__
from kd_probe.apps.cli import main
from kd_probe.apps.demo.plan import Plan, add_arguments, make_plan, sigma_options
from kd_probe.apps.demo.probes import agreement_probe as _agreement
from kd_probe.apps.demo.probes import unicam_probe as _unicam
from kd_probe.apps.demo.run import _tensorboard_command, run_demo
from kd_probe.apps.demo.run import main as demo_main
from kd_probe.apps.report.write import METRICS, UNICAM, _format
from kd_probe.data import ShapesDataModule
from tests.tensorboard_server import get_json, tensorboard_server


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("runs")
    from contextlib import redirect_stdout
    from io import StringIO

    buffer = StringIO()
    with redirect_stdout(buffer):
        assert main(["demo", "--quick", "--out", str(out), "--experiment", "e"]) == 0
    return out / "e", buffer.getvalue()


@pytest.mark.slow
def test_demo_trains_probes_and_reports(quick_demo: tuple[Path, str]) -> None:
    folder, out = quick_demo
    for line in ("teacher", "distilled", "baseline", f"--logdir {folder}", "The paper's hypotheses:\n", "\n  H1 ("):
        assert line in out
    assert f"Full report: {folder / 'report.md'}" in out and "\n| " not in out  # the short form, not the Markdown
    assert re.search(r"\[2/3\] distilled .*\(demo: 2 runs left, about \d+ s\)", out), "an estimate of the time left"
    assert re.search(r"\[3/3\] baseline .*\(demo: 1 run left, about \d+ s\)", out)
    for run in ("teacher", "distilled", "baseline"):
        assert list((folder / run).glob("events.out.tfevents.*")), run
        assert json.loads((folder / run / "kd_probe_run.json").read_text())["role"] == run
    for run in ("distilled", "baseline"):
        assert (folder / run / "kd_probe_summary.json").exists() and (folder / run / "kd_probe_history.pt").exists()
        settings = json.loads((folder / run / "kd_probe_summary.json").read_text())["settings"]
        assert (settings["method"], settings["passes"], settings["samples"]) == ("secant", 2, 8)
    assert not (folder / "teacher" / "kd_probe_summary.json").exists()
    assert re.search(r"Done in \d+ s \(\d+ s of it in the knowledge-point probes\)", out)


@pytest.mark.slow
def test_report_table_and_verdicts_match_the_summaries(quick_demo: tuple[Path, str]) -> None:
    folder, _ = quick_demo
    report = (folder / "report.md").read_text()
    runs_table = report.split("## Runs")[1].split("## ")[0]  # the per-run table (the group table follows)
    rows = {line.split(" | ")[0].strip("| "): line for line in runs_table.splitlines() if line.startswith("| ")}
    for run in ("distilled", "baseline"):
        summary = json.loads((folder / run / "kd_probe_summary.json").read_text())
        accuracy = json.loads((folder / run / "kd_probe_run.json").read_text())["test_accuracy"]
        cells = [cell.strip() for cell in rows[run].strip("|").split("|")]
        values = dict(zip([label for _, label in METRICS], cells[3:], strict=True))
        assert values["accuracy"] == _format("accuracy", accuracy)
        for key, label in METRICS[1:-1]:  # each estimate, then its interval: "18.2 [16.1, 20.3]"
            assert values[label].split(" [")[0] == _format(key, summary[key]), (run, key)
            assert re.fullmatch(r"\S+ \[\S+, \S+\]", values[label]), (run, key)
    lines = report.splitlines()
    verdicts = [line for line in lines if line.startswith("- **H")]
    assert [line[:8] for line in verdicts] == ["- **H1**", "- **H2**", "- **H3**"]
    summaries = {
        run: json.loads((folder / run / "kd_probe_summary.json").read_text()) for run in ("distilled", "baseline")
    }
    for line, keys in zip(verdicts, (("n_fg", "fg_ratio"), ("d_mean", "d_std"), ("rho",)), strict=True):
        at = lines.index(line)
        assert lines[at + 1].startswith("  - about distillation: **no verdict** from one seed pair")  # --quick: 1 seed
        assert lines[at + 2] == "  - about these runs (do these networks differ on such images?):"
        every_image = lines[at + 3]
        assert every_image.startswith("    - all probe images (")
        assert lines[at + 4].startswith("    - effective images (")
        for key in keys:  # each statement quotes the summaries' values, distilled first
            label = dict(METRICS)[key]
            assert (
                f"{label} {_format(key, summaries['distilled'][key])} vs {_format(key, summaries['baseline'][key])}"
                in every_image
            )
        words = (
            "differ as predicted",
            "differ the other way",
            "not distinguishable",
            "mixed",
            "partly",
            "undetermined",
        )
        assert any(f"**{word}" in every_image for word in words)
    assert "holds" not in report.split("## The paper's hypotheses")[1]  # no verdict about distillation from one seed
    assert "| 0.1 |" in report and "| 0.5 |" in report  # the threshold sweep
    assert "## Agreement with the teacher" in report and "| CAM cosine |" in report
    assert (folder / "curves.png").exists() and (folder / "maps.png").exists() and (folder / "unicam.png").exists()


@pytest.mark.slow
def test_report_unicam_table_matches_the_probe_files(quick_demo: tuple[Path, str]) -> None:
    folder, _ = quick_demo
    report = (folder / "report.md").read_text()
    table = report.split("## What the student holds of the teacher")[1].split("## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    body = {row[0]: row[1:] for row in rows[1:]}
    records = {
        run: torch.load(folder / run / "kd_probe_unicam.pt", weights_only=True) for run in ("distilled", "baseline")
    }
    layers = [pair[0] for pair in records["distilled"]["layers"]]
    assert layers == ["features.relu2", "features.relu4"]  # every stage of the quick student
    for layer in layers:
        for key, label in UNICAM:
            cells = body[f"{layer} {label}"]
            for column, run in enumerate(("distilled", "baseline")):
                last = records[run]["entries"][-1]
                assert cells[column].split(" [")[0] == _format("", last[f"{key}/{layer}"]), (run, layer, key)
                assert " [" in cells[column]  # an interval from the saved distance matrices
            if key != "rs/teacher":  # the teacher's side is the same in both runs
                assert " [" in cells[2]  # and a paired interval of the difference
            assert cells[3] == "needs ≥ 2 seed pairs"  # one seed pair: nothing about distillation
    assert "In these runs, at features.relu4, the distilled student's features are " in table
    assert "One seed pair says nothing about distillation in general." in table


@pytest.mark.slow
def test_the_agreement_file_holds_the_per_image_values_of_the_held_out_images(quick_demo: tuple[Path, str]) -> None:
    folder, _ = quick_demo
    for run in ("distilled", "baseline"):
        record = torch.load(folder / run / "kd_probe_agreement.pt", weights_only=True)
        assert (record["images"], record["masks"], record["eps_keys"]) == (
            16,
            True,
            ["eps_1", "eps_2", "eps_4", "eps_8"],
        )
        assert [entry["epoch"] for entry in record["entries"]] == [0, 1]
        for entry in record["entries"]:
            assert entry["per_image"]["teacher_fooled/eps_8"].shape == (16,), run
            assert entry["cam_energy_in_mask/student"] == pytest.approx(
                float(entry["per_image"]["cam_energy_in_mask/student"].nanmean())
            )


def test_the_agreement_probe_measures_the_unicam_probes_held_out_images() -> None:
    plan = _plan()
    assert plan.unicam_images >= 64 and _plan("--full").unicam_images >= 64
    data = ShapesDataModule(num_classes=3, image_size=16, train_size=8, val_size=80, test_size=8, probe_size=4)
    agreement, unicam = _agreement(plan, data, nn.Identity(), 0), _unicam(plan, data, nn.Identity())
    assert agreement.images.shape[0] == plan.unicam_images and agreement.masks is not None
    assert torch.equal(agreement.images, unicam.images) and torch.equal(agreement.labels, unicam.labels)
    assert torch.equal(agreement.mean.flatten(), torch.tensor(data.mean, dtype=torch.float32))


@pytest.mark.slow
def test_report_command_on_an_experiment_folder(
    quick_demo: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, _ = quick_demo
    assert main(["report", str(folder), "--out", str(tmp_path), "--no-figures"]) == 0
    assert "## The paper's hypotheses" in capsys.readouterr().out
    assert (tmp_path / "report.md").exists() and not (tmp_path / "curves.png").exists()


def test_report_without_runs_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no run with a kd_probe_summary.json" in capsys.readouterr().err


@pytest.mark.slow
def test_the_printed_tensorboard_command_runs_as_shown_and_keeps_every_image(quick_demo: tuple[Path, str]) -> None:
    folder, out = quick_demo
    command = shlex.split(out.split("Watch the curves with:\n", 1)[1].splitlines()[0])
    script = Path(sys.executable).parent / "tensorboard"
    assert (
        command[:1] == [str(script)] if script.is_file() else command[:3] == [sys.executable, "-m", "tensorboard.main"]
    )
    assert command[-4:] == ["--logdir", str(folder), "--samples_per_plugin", "images=1000"]
    version = subprocess.run([*command[:-4], "--version_tb"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+\S*", version.stdout.strip()), version


def test_the_tensorboard_command_falls_back_to_this_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "my env" / "python"))  # no tensorboard script beside it
    assert shlex.split(_tensorboard_command(tmp_path / "runs")) == [
        str(tmp_path / "my env" / "python"),
        *("-m", "tensorboard.main", "--logdir", str(tmp_path / "runs"), "--samples_per_plugin", "images=1000"),
    ]


@pytest.mark.slow
def test_a_real_tensorboard_serves_the_probe_tags(quick_demo: tuple[Path, str]) -> None:
    """With the printed command's options, TensorBoard serves the tags and every probe step's image grid."""
    folder, out = quick_demo
    options = shlex.split(out.split("Watch the curves with:\n", 1)[1].splitlines()[0])[-2:]
    with tensorboard_server(folder, *options) as base:
        scalars: dict = {}
        images: dict = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                scalars = get_json(f"{base}/data/plugin/scalars/tags")
                images = get_json(f"{base}/data/plugin/images/tags")
            except OSError:
                pass
            if all("4_unicam/residual" in images.get(run, {}) for run in ("distilled", "baseline")):
                break
            time.sleep(1)
        for run in ("distilled", "baseline"):
            assert "1_knowledge_points/n_fg" in scalars[run] and "2_learning_stability/rho" in scalars[run]
            assert "1_knowledge_points/maps" in images[run]
            assert (
                "4_unicam/fss/features.relu4" in scalars[run] and "4_unicam/rs/residual/features.relu2" in scalars[run]
            )
            assert {"4_unicam/distilled", "4_unicam/residual"} <= set(images[run])
            for tag in ("1_knowledge_points/maps", "3_agreement/cams", "4_unicam/distilled"):
                served = get_json(f"{base}/data/plugin/images/images?run={run}&tag={quote(tag)}")
                assert len(served) == 2 and served[0]["step"] == 0, (run, tag, served)  # epochs 0 and 1: both


@pytest.mark.slow
def test_paper_protocol_and_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["demo", "--quick", "--protocol", "paper", "--seeds", "2", "--out", str(tmp_path), "--experiment", "p"])
        == 0
    )
    folder = tmp_path / "p"
    for run in ("distilled-s0", "distilled-s1", "baseline-s0", "baseline-s1"):
        assert (folder / run / "kd_probe_summary.json").exists(), run
        assert (folder / run / "kd_probe_unicam.pt").exists(), run  # the distilled runs': on the mimic phase
    assert list((folder / "distilled-s0" / "head").glob("events.out.tfevents.*"))  # phase 2 logs apart
    report = (folder / "report.md").read_text()
    assert "2/2 seed pairs" in report or "1/2 seed pairs" in report or "0/2 seed pairs" in report
    assert "±" in report


def test_cli_without_a_command_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_cli_version_and_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "", "a b"])
def test_experiment_must_be_one_safe_path_component(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--quick", "--experiment", name])
    assert exit_.value.code == 2
    assert "argument --experiment: `--experiment` must be one safe path component" in capsys.readouterr().err
    assert not Path("runs").exists()


class _Trained(Exception):
    """Raised instead of building the data: the point where the demo would start training."""


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise _Trained

    monkeypatch.setattr("kd_probe.apps.demo.run.modality", refuse)  # builds the data: the first step of training


def _earlier_demo(folder: Path) -> None:
    for run in ("teacher", "distilled-s3", "baseline"):
        (folder / run).mkdir(parents=True)
    (folder / "teacher" / "events.out.tfevents.1.host").write_bytes(b"")
    (folder / "distilled-s3" / "kd_probe_run.json").write_text("{}")
    (folder / "baseline" / "events.out.tfevents.2.host").write_bytes(b"")
    (folder / "report.md").write_text("old")
    (folder / "curves.png").write_bytes(b"old")
    (folder / "notes.txt").write_text("mine")  # what the user keeps next to the runs
    (folder / "teacher-old").mkdir()
    (folder / "teacher-old" / "events.out.tfevents.3.host").write_bytes(b"")


def test_demo_refuses_an_earlier_demo_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _no_training(monkeypatch)
    folder = tmp_path / "e"
    _earlier_demo(folder)
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    assert main(["demo", "--quick", "--out", str(tmp_path), "--experiment", "e"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kd-probe demo: {folder} already holds an earlier demo (baseline, curves.png, distilled-s3, report.md, "
        "teacher); choose another folder with --experiment NAME, or pass --overwrite to remove those runs first."
    )
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


def test_overwrite_removes_only_what_the_demo_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_training(monkeypatch)
    folder = tmp_path / "e"
    _earlier_demo(folder)
    with pytest.raises(_Trained):
        main(["demo", "--quick", "--out", str(tmp_path), "--experiment", "e", "--overwrite"])
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "teacher-old"]
    assert (folder / "teacher-old" / "events.out.tfevents.3.host").exists()


def test_overwrite_leaves_what_is_not_a_demo_run_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _no_training(monkeypatch)
    folder = tmp_path / "e"
    _earlier_demo(folder)
    (folder / "teacher" / "events.out.tfevents.1.host").unlink()
    (folder / "teacher" / "weights.csv").write_text("mine")  # a folder named like a run, but not one
    assert main(["demo", "--quick", "--out", str(tmp_path), "--experiment", "e", "--overwrite"]) == 2
    assert f"{folder / 'teacher'} is not a demo run" in capsys.readouterr().err
    assert (folder / "teacher" / "weights.csv").exists() and (folder / "baseline").exists()  # nothing removed
    shutil.rmtree(folder / "teacher")
    elsewhere = tmp_path / "kept"
    elsewhere.mkdir()
    (elsewhere / "events.out.tfevents.4.host").write_bytes(b"")
    (folder / "teacher").symlink_to(elsewhere)  # a link is never followed, even to a run
    assert main(["demo", "--quick", "--out", str(tmp_path), "--experiment", "e", "--overwrite"]) == 2
    assert f"{folder / 'teacher'} is not a demo run" in capsys.readouterr().err
    assert (elsewhere / "events.out.tfevents.4.host").exists() and (folder / "report.md").exists()


@pytest.mark.slow
def test_overwrite_reruns_the_demo_with_fresh_event_files(quick_demo: tuple[Path, str], tmp_path: Path) -> None:
    folder = Path(shutil.copytree(quick_demo[0], tmp_path / "e"))
    (folder / "notes.txt").write_text("mine")
    runs = ("teacher", "distilled", "baseline")
    old = {run: sorted(p.name for p in (folder / run).glob("events.out.tfevents.*")) for run in runs}
    from contextlib import redirect_stdout
    from io import StringIO

    with redirect_stdout(StringIO()):
        assert main(["demo", "--quick", "--out", str(tmp_path), "--experiment", "e", "--overwrite"]) == 0
    for run in runs:  # as many event files as a first demo writes, none of them the old ones: no doubled curves
        new = sorted(p.name for p in (folder / run).glob("events.out.tfevents.*"))
        assert len(new) == len(old[run]) and not set(new) & set(old[run]), run
    report = (folder / "report.md").read_text()
    assert (folder / "notes.txt").read_text() == "mine" and "## The paper's hypotheses" in report
    for run in ("distilled", "baseline"):  # deterministic: the same knowledge points and metrics again
        again = json.loads((folder / run / "kd_probe_summary.json").read_text())
        first = json.loads((quick_demo[0] / run / "kd_probe_summary.json").read_text())
        assert again == first, run


def _plan(*argv: str) -> Plan:
    return make_plan(add_arguments(argparse.ArgumentParser()).parse_args(list(argv)))


def test_the_demo_probes_four_times_the_images_with_secant_for_less_sigma_work() -> None:
    new, old = _plan(), _plan("--method", "faithful")  # old: the demo's probe before the secant method
    assert (new.method, new.probe_images, new.passes, new.samples) == ("secant", 40, 2, 64)
    assert (old.method, old.probe_images, old.passes, old.samples) == ("faithful", 10, None, 16)
    assert new.probe_images >= 4 * old.probe_images
    # forward + backward passes of noise images per probe: secant passes × samples per image, faithful samples ×
    # the steps an image runs — about 36 with the early stop (patience 3) on the demo's trained student, 41 at
    # initialisation, 60 without it (benchmarks/bench_demo_probes.py --flops) — with a 10 % margin
    assert new.probe_images * new.passes * new.samples <= 0.9 * old.probe_images * old.samples * 36
    assert sigma_options(new) == {
        "layer": "features.bn6",
        "method": "secant",
        "grid": 16,
        "steps": 80,
        "samples": 64,
        "passes": 2,
    }
    mine = _plan("--passes", "1", "--samples", "200", "--probe-images", "48")
    assert (mine.method, mine.probe_images, mine.passes, mine.samples) == ("secant", 48, 1, 200)


def test_full_keeps_the_papers_faithful_probe() -> None:
    full = _plan("--full")
    assert sigma_options(full) == {
        "layer": "features.bn6",
        "method": "faithful",
        "grid": 16,
        "steps": 80,
        "samples": 96,
    }
    assert (full.probe_images, full.epochs, full.schedule) == (32, 30, "paper")
    secant = _plan("--full", "--method", "secant")  # estimate_sigma_maps' own secant defaults
    assert (secant.method, secant.passes, secant.samples, secant.probe_images) == ("secant", 3, 256, 32)


@pytest.mark.parametrize("argv", [["--method", "faithful", "--passes", "2"], ["--full", "--passes", "1"]])
def test_passes_without_the_secant_method_is_refused_before_anything_runs(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _no_training(monkeypatch)
    _earlier_demo(tmp_path / "e")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    options = [*argv, "--out", str(tmp_path), "--experiment", "e", "--overwrite"]
    with pytest.raises(SystemExit) as exit_:
        demo_main(options)
    assert exit_.value.code == 2
    assert "argument --passes: applies to --method secant only, got --method faithful" in capsys.readouterr().err
    args = add_arguments(argparse.ArgumentParser()).parse_args(options)
    with pytest.raises(ValueError, match="applies to --method secant only"):
        run_demo(args)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # --overwrite not applied


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["text", "points"])
@pytest.mark.parametrize("protocol", ["hinton", "paper"])
def test_demo_on_tokens_and_point_clouds(modality: str, protocol: str, tmp_path: Path) -> None:
    from contextlib import redirect_stdout
    from io import StringIO

    buffer = StringIO()
    with redirect_stdout(buffer):
        argv = ["demo", "--quick", "--modality", modality, "--protocol", protocol, "--out", str(tmp_path)]
        assert main([*argv, "--experiment", "m"]) == 0
    folder, out = tmp_path / "m", buffer.getvalue()
    assert {"text": "sentiment", "points": "point-cloud"}[modality] in out
    for run in ("distilled", "baseline"):
        history = torch.load(folder / run / "kd_probe_history.pt", weights_only=True)
        entropy = history["entries"][-1]["entropy"]
        assert entropy.dim() == 2 and entropy.shape[1] == history["images"].shape[1]  # one σ per token / point
        assert history["settings"]["units"].startswith({"text": "Tokens(", "points": "Points("}[modality])
        assert json.loads((folder / run / "kd_probe_run.json").read_text())["modality"] == modality
        assert not (folder / run / "kd_probe_unicam.pt").exists()  # image-only probes are not attached
    report = (folder / "report.md").read_text()
    assert "## The paper's hypotheses" in report and (folder / "maps.png").exists()


def _quick_run(out: Path, *argv: str) -> tuple[str, dict, dict]:
    """The quick demo's report (without its time line), the distilled run's record and probe history."""
    from contextlib import redirect_stdout
    from io import StringIO

    with redirect_stdout(StringIO()):
        assert main(["demo", "--quick", "--out", str(out), *argv]) == 0
    report = (out / "demo" / "report.md").read_text().splitlines()
    report = [line for line in report if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d;", line)]
    record = json.loads((out / "demo" / "distilled" / "kd_probe_run.json").read_text())
    history = torch.load(out / "demo" / "distilled" / "kd_probe_history.pt", weights_only=True)
    return "\n".join(report), record, history


@pytest.mark.slow
def test_the_demo_computes_with_its_own_thread_count_whatever_the_callers(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _quick_run(tmp_path / "one")
        assert torch.get_num_threads() == 1, "the caller's thread count is restored"
        torch.set_num_threads(3)
        three = _quick_run(tmp_path / "three")
        assert torch.get_num_threads() == 3
        own = _quick_run(tmp_path / "own", "--threads", "0")
    finally:
        torch.set_num_threads(before)
    assert one[1]["threads"] == three[1]["threads"] == 2 and own[1]["threads"] == 3
    assert one[0] == three[0], "the same report, to the last digit"
    assert one[1] == three[1]
    assert _bitwise_equal(one[2], three[2]), "the same σ maps and knowledge points, bit for bit"


def _bitwise_equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_bitwise_equal, a, b))  # type: ignore[arg-type]
    return a == b


def test_threads_must_be_a_count(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        demo_main(["--threads", "-1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "--threads" in err and "got -1" in err
