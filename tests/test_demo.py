from pathlib import Path

import pytest

from kd_probe import __version__
from kd_probe.cli import main


@pytest.mark.slow
def test_demo_trains_three_runs_and_prints_their_accuracies(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--quick", "--out", str(tmp_path), "--experiment", "e"]) == 0
    out = capsys.readouterr().out
    for line in ("teacher", "distilled student", "baseline student", f"tensorboard --logdir {tmp_path / 'e'}"):
        assert line in out
    for run in ("teacher", "distilled", "baseline"):
        assert list((tmp_path / "e" / run).glob("events.out.tfevents.*")), run


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
