"""``kd-probe demo`` options that another option makes meaningless: one line on stderr naming the ignored option
and why, or a refusal with exit status 2 in one sentence (issue 28, class 7). Parsed and planned only: nothing
trains."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kd_probe.apps.cli import main
from kd_probe.apps.demo.modalities import modality
from kd_probe.apps.demo.plan import add_arguments, make_plan
from kd_probe.apps.demo.run import run_demo
from kd_probe.apps.options import ignored_demo_flags

HINT = "(kd-probe demo --help lists the options)"


def _args(*argv: str) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


IGNORED = [
    (["--quick", "--epochs", "5"], "--epochs 5 is ignored: --quick trains every student 1 epoch (drop --quick to use it)."),
    (["--quick", "--teacher-epochs", "3"], "--teacher-epochs 3 is ignored: --quick trains the teacher 1 epoch (drop --quick to use it)."),
    (["--quick", "--train-size", "900"], "--train-size 900 is ignored: --quick trains on 256 images (drop --quick to use it)."),
    (["--quick", "--probe-images", "12"], "--probe-images 12 is ignored: --quick probes 4 images (drop --quick to use it)."),
    (["--modality", "text", "--image-size", "64"], "--image-size 64 is ignored: --modality text has no images."),
    (["--modality", "points", "--image-size", "64"], "--image-size 64 is ignored: --modality points has no images."),
    (["--modality", "text", "--num-classes", "4"], "--num-classes 4 is ignored: --modality text has 2 classes (positive and negative sentences)."),
]  # fmt: skip


IGNORED_IDS = ["quick-epochs", "quick-teacher-epochs", "quick-train-size", "quick-probe-images", "text-image-size",
               "points-image-size", "text-num-classes"]  # fmt: skip


@pytest.mark.parametrize(("argv", "note"), IGNORED, ids=IGNORED_IDS)
def test_an_option_another_makes_meaningless_is_named_on_one_line_and_ignored(argv: list[str], note: str) -> None:
    args = _args(*argv)
    assert ignored_demo_flags(args) == [note]
    plan, default = make_plan(args), make_plan(_args(*argv[:-2]))
    assert plan == default  # the run is the one without the ignored option


def test_options_that_apply_are_not_noted_and_defaults_are_unchanged() -> None:
    for argv in (
        [],
        ["--epochs", "5", "--train-size", "900", "--image-size", "48", "--num-classes", "4"],
        ["--quick", "--samples", "3", "--passes", "1", "--seeds", "2", "--num-classes", "3"],
        ["--modality", "points", "--num-classes", "3"],
        ["--full", "--epochs", "12"],
    ):
        assert ignored_demo_flags(_args(*argv)) == [], argv
    image = modality(_args("--quick"), make_plan(_args("--quick")))
    assert (image.data.num_classes, image.data.image_size) == (6, 32)
    points = modality(_args("--quick", "--modality", "points"), make_plan(_args("--quick")))
    assert points.data.num_classes == 5
    assert (
        modality(_args("--quick", "--modality", "points", "--num-classes", "3"), make_plan(_args())).data.num_classes
        == 3
    )


def test_the_demo_prints_each_note_on_stderr_before_anything_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    class Trained(Exception):
        pass

    def refuse(*args: object, **kwargs: object) -> None:
        raise Trained

    monkeypatch.setattr("kd_probe.apps.demo.run.modality", refuse)  # builds the data: the first step of training
    argv = ["--quick", "--epochs", "5", "--modality", "text", "--image-size", "64", "--out", str(tmp_path)]
    with pytest.raises(Trained):
        run_demo(_args(*argv))
    assert capsys.readouterr().err.splitlines() == [
        "kd-probe demo: --epochs 5 is ignored: --quick trains every student 1 epoch (drop --quick to use it).",
        "kd-probe demo: --image-size 64 is ignored: --modality text has no images.",
    ]
    assert not any(tmp_path.iterdir())


REFUSED = [
    (
        ["--quick", "--full"],
        "argument --full: not allowed with --quick (a pipeline check in seconds, not a longer run)",
    ),
    (
        ["--modality", "points", "--num-classes", "8"],
        "argument --num-classes: expected an integer from 2 to 5 with --modality points (one class per point-cloud "
        "object), got 8",
    ),
]


@pytest.mark.parametrize(("argv", "message"), REFUSED, ids=["quick-full", "points-classes"])
def test_contradicting_options_are_one_sentence_and_exit_2_before_anything_runs(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *argv, "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"kd-probe demo: error: {message} {HINT}"]
    with pytest.raises(ValueError, match=message.split(":")[0]):
        run_demo(_args(*argv, "--out", str(tmp_path)))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "gpu", "pairs", "said"),
    [
        ([], False, 1, "1 seed pair (the default on the CPU, to stay within minutes): the report says whether these "
         "runs differ and gives no verdict about distillation, which needs at least 2 seed pairs; --seeds 3 gives "
         "verdicts and takes about 3× as long."),
        ([], True, 3, "3 seed pairs (the default on a GPU), so that the report's verdicts about distillation count "
         "how much training seeds disagree."),
        (["--full"], False, 5, "5 seed pairs (the --full default), so that the report's verdicts about "
         "distillation count how much training seeds disagree."),
        (["--quick"], True, 1, ""),
        (["--seeds", "2"], False, 2, ""),
        (["--seeds", "1"], True, 1, "1 seed pair (--seeds 1): the report says whether these runs differ and gives "
         "no verdict about distillation, which needs at least 2 seed pairs."),
    ],
)  # fmt: skip
def test_the_demo_trains_enough_seed_pairs_for_verdicts_where_it_can_and_says_which(
    argv: list[str], gpu: bool, pairs: int, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from kd_probe.apps.demo.plan import seed_pairs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    args = _args(*argv)
    assert seed_pairs(args) == (pairs, said)
    assert make_plan(args).seeds == pairs


def test_the_kd_methods_the_demo_offers_are_kd_probe_losses_methods() -> None:
    from kd_probe.apps.options import KD_METHODS
    from kd_probe.losses import METHODS

    assert tuple(METHODS) == KD_METHODS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kd-method", "at", "--modality", "text"], "argument --kd-method: at matches feature maps, which --modality text has not"),
        (["--kd-method", "dkd", "--protocol", "paper"], "argument --kd-method: applies to --protocol hinton, got --kd-method dkd with paper"),
    ],
)  # fmt: skip
def test_a_kd_method_that_cannot_apply_is_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", *argv, "--out", "/nonexistent/never-written"])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method", ["crd", "at"])
def test_the_demo_distils_with_another_kd_method(tmp_path: Path, method: str) -> None:
    import json

    argv = ["demo", "--quick", "--kd-method", method, "--out", str(tmp_path), "--experiment", "e"]
    assert main(argv) == 0
    record = json.loads((tmp_path / "e" / "distilled" / "kd_probe_run.json").read_text())
    assert record["kd_method"] == method and "kd_method" not in json.loads(
        (tmp_path / "e" / "baseline" / "kd_probe_run.json").read_text()
    )
    assert (tmp_path / "e" / "report.md").exists()
