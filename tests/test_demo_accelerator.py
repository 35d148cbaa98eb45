"""``kd-probe demo --accelerator/--devices`` (issue 32): the CPU exactly as before, a GPU where one is asked for
and there, and one sentence where it is not."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_probe.apps.cli import main
from kd_probe.apps.demo.plan import add_arguments, make_plan, seed_pairs
from kd_probe.apps.demo.run import _trainer_options
from kd_probe.apps.options import Parser


def _args(*arguments: str) -> argparse.Namespace:
    return add_arguments(Parser(prog="kd-probe demo")).parse_args(list(arguments))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_a_gpu_asked_for_without_one_is_one_sentence(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--accelerator", "gpu", "--quick"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "kd-probe demo: error: argument --accelerator: gpu asked for, but PyTorch sees no GPU "
        "(torch.cuda.is_available() is False); use --accelerator cpu or auto (kd-probe demo --help lists the "
        "options)\n"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default")
def test_on_the_cpu_the_trainers_are_as_before() -> None:
    for given in ((), ("--accelerator", "auto"), ("--accelerator", "cpu")):
        plan = make_plan(_args(*given))
        assert (plan.accelerator, plan.devices) == ("cpu", 1)
        options = _trainer_options(False, plan)
        assert options == {**_trainer_options(False), "accelerator": "cpu", "devices": 1}
        assert options["deterministic"] is True
    assert seed_pairs(_args())[0] == 1


def test_on_a_gpu_the_trainers_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A simulated GPU machine: auto chooses the GPU, 3 seed pairs by default, Lightning's deterministic 'warn'
    (some CUDA kernels have no deterministic version); --accelerator cpu keeps everything as on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = make_plan(_args())
    assert (plan.accelerator, plan.devices, plan.seeds) == ("gpu", 1, 3)
    options = _trainer_options(False, plan)
    assert (options["accelerator"], options["devices"], options["deterministic"]) == ("gpu", 1, "warn")
    on_cpu = make_plan(_args("--accelerator", "cpu"))
    assert (on_cpu.accelerator, on_cpu.seeds) == ("cpu", 1)
    assert _trainer_options(False, on_cpu)["deterministic"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_several_devices_without_a_gpu_need_the_cpu_named(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--devices", "2", "--quick"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "kd-probe demo: error: argument --devices: 2 devices asked for, but PyTorch sees no GPU; add --accelerator "
        "cpu to train over 2 CPU processes (kd-probe demo --help lists the options)\n"
    )


def test_several_devices_train_with_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    """--devices N: DDP over N CPU processes or GPUs (told of unused parameters only for the two-phase protocol);
    auto is one device; more GPUs than PyTorch sees is one sentence."""
    plan = make_plan(_args("--accelerator", "cpu", "--devices", "2"))
    assert (plan.accelerator, plan.devices) == ("cpu", 2)
    assert _trainer_options(False, plan)["strategy"] == "ddp"
    assert _trainer_options(False, plan, unused=True)["strategy"] == "ddp_find_unused_parameters_true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert make_plan(_args("--devices", "auto")).devices == 1
    assert (make_plan(_args("--devices", "2")).accelerator, make_plan(_args("--devices", "2")).devices) == ("gpu", 2)
    with pytest.raises(
        ValueError, match=r"^argument --devices: 3 GPUs asked for, but PyTorch sees 2; use at most that many$"
    ):
        make_plan(_args("--devices", "3"))


@pytest.mark.slow
def test_the_demo_over_two_cpu_processes_prints_and_writes_once(tmp_path: Path) -> None:
    """Lightning starts rank 1 as a copy of the command; it trains and probes with rank 0, which alone prints
    and writes the run files and the report."""
    done = subprocess.run(
        [sys.executable, "-m", "kd_probe", "demo", "--quick", "--accelerator", "cpu", "--devices", "2", "--out", "out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[1/3] teacher:") == 1 and "DDP over 2 CPU processes" in done.stdout
    assert done.stdout.count("Full report: ") == 1
    folder = tmp_path / "out" / "demo"
    for run in ("teacher", "distilled", "baseline"):
        assert json.loads((folder / run / "kd_probe_run.json").read_text())["run"] == run
    history = torch.load(folder / "distilled" / "kd_probe_history.pt", weights_only=True)
    assert [entry["failed"] for entry in history["entries"]] == [None, None]
    assert (folder / "report.md").is_file()
