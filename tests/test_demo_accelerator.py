"""``kd-probe demo --accelerator/--devices`` (issue 32): the CPU exactly as before, a GPU where one is asked for
and there, and one sentence where it is not."""

import argparse

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
