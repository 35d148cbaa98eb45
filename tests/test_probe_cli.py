"""Issue 33: ``kd-probe probe --config`` probes a run trained anywhere from its saved checkpoints: the history of
a live run of the same training, bit for bit; a rerun over a longer series probes only the new checkpoints;
``kd-probe report`` reads offline and live runs alike; every mistake is one sentence and exit status 2."""

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kd_probe import AgreementProbe, KnowledgePointProbe, ProbeRunner, UniCAMProbe, WeightTrajectoryMonitor
from kd_probe.apps import probe_runs
from kd_probe.apps.cli import main
from tests.callbacks.test_agreement_ddp import assert_same, net
from tests.callbacks.test_runner import EPOCHS, data, histories, lightning_run, training_set

NET = "{class_path: kd_probe.models.VGG, init_args: {num_classes: 3, widths: [4, 8], convs_per_stage: 1, batch_norm: false}}"
DATA = "{class_path: kd_probe.ShapesDataModule, init_args: {num_classes: 3, image_size: 16, train_size: 32, val_size: 8, test_size: 8, probe_size: 4}}"
PROBES = """
  - class_path: kd_probe.KnowledgePointProbe
    init_args: {images: datamodule, layer: features.conv2, grid: 4, samples: 4, steps: 4}
  - class_path: kd_probe.AgreementProbe
    init_args: {images: datamodule, teacher_layer: features.relu2, student_layer: features.relu2, log_images: 2}
  - class_path: kd_probe.UniCAMProbe
    init_args: {images: datamodule, layers: [features.relu2], cam_layer: features.relu2, log_images: 2}
  - class_path: kd_probe.WeightTrajectoryMonitor
"""


def live_probes() -> list[Any]:
    return [
        KnowledgePointProbe(data(), layer="features.conv2", grid=4, samples=4, steps=4),
        AgreementProbe(data(), teacher_layer="features.relu2", student_layer="features.relu2", log_images=2),
        UniCAMProbe(data(), layers=["features.relu2"], cam_layer="features.relu2", log_images=2),
        WeightTrajectoryMonitor(),
    ]


def train_and_save(folder: Path, how: str) -> list[Any]:
    """A plain loop that probes as it trains (the live run, in ``folder/live``) and saves the student after every
    epoch (0: before training) into ``folder/checkpoints``: ``plain`` state_dicts named ``epoch_<e>.pt``, or
    ``wrapped`` ones, ``module.``-prefixed inside ``{"model": ..., "epoch": e}`` and named ``ckpt<e>.pth``."""
    student, teacher = net(1), net(0)
    saved = folder / "checkpoints"
    saved.mkdir(parents=True)
    torch.save(teacher.state_dict(), folder / "teacher.pt")

    def save(epoch: int) -> None:
        state = student.state_dict()
        if how == "plain":
            torch.save(state, saved / f"epoch_{epoch}.pt")
        else:
            torch.save(
                {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": epoch}, saved / f"ckpt{epoch}.pth"
            )

    optimizer = torch.optim.SGD(student.parameters(), lr=0.2)
    used = live_probes()
    with ProbeRunner(used, folder / "live", student=student, teacher=teacher, progress=False) as runner:
        save(0)
        for epoch in range(1, EPOCHS + 1):
            for images, labels in DataLoader(training_set(), batch_size=32):
                optimizer.zero_grad()
                F.cross_entropy(student(images), labels).backward()
                optimizer.step()
                runner.step()
            runner.epoch_end()
            save(epoch)
    return used


def config(
    folder: Path, checkpoints: str, run: str = "offline", extra: str = "", role: str = "baseline", probes: str = PROBES
) -> Path:
    path = folder / f"{run}.yaml"
    path.write_text(
        f"student: {NET}\nteacher: {NET}\nteacher_checkpoint: {folder / 'teacher.pt'}\ncheckpoints: {checkpoints}\n"
        f"data: {DATA}\nprobes:{probes}run: {folder / run}\nrole: {role}\ndevice: cpu\n{extra}"
    )
    return path


def offline_histories(run: Path) -> list[Any]:
    files = ("kd_probe_history.pt", "kd_probe_agreement.pt", "kd_probe_unicam.pt")
    return [torch.load(run / name, weights_only=True)["entries"] for name in files]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["plain", "wrapped"])
def test_probing_saved_checkpoints_records_the_live_history(tmp_path: Path, how: str) -> None:
    live = train_and_save(tmp_path, how)
    pattern = tmp_path / "checkpoints" / ("epoch_*.pt" if how == "plain" else "*.pth")
    assert main(["probe", "--config", str(config(tmp_path, str(pattern)))]) == 0
    offline = offline_histories(tmp_path / "offline")
    expected = histories(live)[:3]
    assert [entry["epoch"] for entry in offline[0]] == [0, 1, 2, 3]
    offline = [[{k: v for k, v in e.items() if k != "problems"} for e in h] for h in offline]
    assert_same(offline, expected, "history")
    assert_same(offline, histories(lightning_run(tmp_path / "lightning"))[:3], "a Lightning run's history")


@pytest.mark.slow
def test_a_rerun_over_a_longer_series_probes_only_the_new_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    train_and_save(tmp_path, "plain")
    files = sorted((tmp_path / "checkpoints").glob("epoch_*.pt"))
    first = "[" + ", ".join(str(f) for f in files[:2]) + "]"
    assert main(["probe", "--config", str(config(tmp_path, first, "resumed"))]) == 0
    assert main(["probe", "--config", str(config(tmp_path, str(tmp_path / "checkpoints"), "resumed"))]) == 0
    said = capsys.readouterr().out
    assert "epochs up to 1 were probed before; 2 checkpoint(s) to go" in said
    changed = PROBES.replace("steps: 4", "steps: 5")
    every = str(tmp_path / "checkpoints")
    assert main(["probe", "--config", str(config(tmp_path, every, "resumed", probes=changed))]) == 2
    assert "resume with the same settings" in capsys.readouterr().err
    assert main(["probe", "--config", str(config(tmp_path, str(tmp_path / "checkpoints"), "whole"))]) == 0
    assert_same(offline_histories(tmp_path / "resumed"), offline_histories(tmp_path / "whole"), "history")


@pytest.mark.slow
def test_the_report_reads_an_offline_and_a_live_run(tmp_path: Path) -> None:
    train_and_save(tmp_path, "plain")
    assert main(["probe", "--config", str(config(tmp_path, str(tmp_path / "checkpoints"), extra="seed: 0\n"))]) == 0
    live = tmp_path / "live"
    (live / "kd_probe_run.json").write_text('{"run": "live", "role": "distilled", "seed": 0}')
    assert main(["report", str(live), str(tmp_path / "offline"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| live | distilled |" in report and "| offline | baseline |" in report
    assert (  # the live run sums D over every step, the offline one over its checkpoints: H2 is not compared
        "  - not compared: D is summed over every optimizer step in live and over the saved checkpoints in offline "
        "(methods §1.4), so D_mean and D_std are not compared;" in report
    )


class _Hack:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch hacked",))


def test_every_mistake_is_one_sentence_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.save(net(0).state_dict(), tmp_path / "teacher.pt")
    (tmp_path / "checkpoints").mkdir()
    torch.save(net(1).state_dict(), tmp_path / "checkpoints" / "epoch_0.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "checkpoints" / "epoch_1.pt")
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "epoch_0.pt").write_bytes(pickle.dumps(_Hack()))
    (tmp_path / "nameless").mkdir()
    torch.save(net(1).state_dict(), tmp_path / "nameless" / "weights.pt")
    cases = {
        str(tmp_path / "none" / "*.pt"): "matched",
        str(tmp_path / "checkpoints"): "does not hold the weights of this VGG",
        str(tmp_path / "evil"): "weights_only=True",
        str(tmp_path / "nameless"): "epochs",
    }
    monkeypatch.chdir(tmp_path)
    for checkpoints, words in cases.items():
        assert probe_runs.main(["--config", str(config(tmp_path, checkpoints))]) == 2, checkpoints
        err = capsys.readouterr().err
        assert err.startswith("kd-probe probe: error: ") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "hacked").exists()
    good = str(tmp_path / "checkpoints" / "epoch_0.pt")
    assert probe_runs.main(["--config", str(config(tmp_path, f"[{good}]", role="teacher"))]) == 2
    assert "`role` must be one of distilled, baseline, got 'teacher'." in capsys.readouterr().err


@pytest.mark.slow
def test_the_examples_plain_loop_and_its_offline_probe(tmp_path: Path) -> None:
    """examples/plain_loop.py probes as it trains and saves its checkpoints; examples/probe_checkpoints.yaml
    probes them again: the same σ maps (D differs: the loop sums every step, the checkpoints every epoch)."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    small = ["--epochs", "2", "--train-size", "64", "--image-size", "16"]
    loop = subprocess.run(
        [sys.executable, str(examples / "plain_loop.py"), *small], cwd=tmp_path, capture_output=True, text=True
    )
    assert loop.returncode == 0, loop.stderr[-2000:]
    overrides = ["--data.init_args.train_size", "64", "--data.init_args.image_size", "16"]
    probed = subprocess.run(
        [sys.executable, "-m", "kd_probe", "probe", "--config", str(examples / "probe_checkpoints.yaml"), *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert probed.returncode == 0, probed.stderr[-2000:]
    runs = tmp_path / "runs" / "examples"
    live = torch.load(runs / "plain_loop" / "kd_probe_history.pt", weights_only=True)["entries"]
    offline = torch.load(runs / "plain_loop_offline" / "kd_probe_history.pt", weights_only=True)["entries"]
    assert [entry["epoch"] for entry in offline] == [0, 1, 2]
    for a, b in zip(live, offline, strict=True):
        assert torch.equal(a["entropy"], b["entropy"]) and torch.equal(a["points"], b["points"])
        assert b["distance"] <= a["distance"] + 1e-12  # the straight segments between checkpoints: never longer
