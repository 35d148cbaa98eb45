"""A long probe's progress bar on the console: full when the probe is done, then cleared."""

import io
import sys
from types import SimpleNamespace

import pytest

from kd_probe.callbacks._guard import ProbeProgress


def _console(ticks: int, total: int, fail: bool = False) -> str:
    trainer = SimpleNamespace(is_global_zero=True, progress_bar_callback=object())
    console, stderr = io.StringIO(), sys.stderr
    sys.stderr = console  # tqdm writes to the stderr of the moment it starts
    try:
        with ProbeProgress(trainer, "knowledge points epoch 3", total, "step") as tick:
            for done in range(1, ticks + 1):  # faster than tqdm's redraw interval: none of these is drawn
                tick(done, total)
            if fail:
                raise RuntimeError("the probe failed")
    except RuntimeError:
        pass
    finally:
        sys.stderr = stderr
    return console.getvalue()


@pytest.mark.parametrize("ticks", [3, 4])  # the last tick before the end, or none (every image stopped early)
def test_the_bar_reaches_100_percent_then_clears(ticks: int) -> None:
    drawn = [line for line in _console(ticks, 4).split("\r") if line]
    assert "100%" in drawn[-2] and "4/4" in drawn[-2], drawn
    assert drawn[-1].strip() == "", "then the line is cleared"


def test_a_failed_probe_clears_its_bar_as_it_stands() -> None:
    drawn = [line for line in _console(2, 4, fail=True).split("\r") if line]
    assert not any("100%" in line for line in drawn) and drawn[-1].strip() == ""


def test_no_bar_without_the_trainers_progress_bar() -> None:
    trainer = SimpleNamespace(is_global_zero=True, progress_bar_callback=None)
    with ProbeProgress(trainer, "knowledge points", 4) as tick:
        tick(4, 4)
