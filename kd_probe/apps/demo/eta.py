"""How long the demo has left: the epochs still to run times the seconds per epoch seen so far, plus the
knowledge-point probes still to run times the seconds per probe seen so far.

``DemoClock`` counts the teacher's and the students' epochs and the students' probes; ``EpochTimer`` (a callback on
every run) tells it when each epoch ends, probes included; the probes' own clocks tell it what the probes took, so
that an epoch's rate is its training alone (the probes are not spread evenly: the demo probes its first epochs
most); ``DemoProgressBar`` shows the estimate next to Lightning's own numbers, and the run headers print it too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override

__all__ = ["DemoClock", "DemoProgressBar", "EpochTimer", "duration"]


def duration(seconds: float) -> str:
    """``"40 s"``, ``"3 min"`` or ``"1 h 05 min"``, rounded for a human."""
    if seconds < 90:
        return f"{max(5, round(seconds / 5) * 5)} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


class ProbeTimes(Protocol):
    """What a knowledge-point probe's clock tells: its probes' seconds and how many probes they were, so far."""

    seconds: float
    probes: int


class DemoClock:
    """The demo's epochs by kind (``"teacher"``, ``"student"``) and the students' knowledge-point probes, those
    still to run and their seconds so far.

    ``probe_clocks`` (filled as the runs start) time the probes, ``probes_per_run`` of them in each student run.
    A student epoch's seconds are its training: what its probes took (every probe of an epoch runs before the
    epoch's end is recorded) is counted per probe instead. Until a student epoch has run, a student epoch is
    guessed to cost a teacher epoch; until a probe has run, a probe is not counted.
    """

    def __init__(
        self,
        teacher_epochs: int,
        student_epochs: int,
        student_runs: int,
        probes_per_run: int = 0,
        probe_clocks: Sequence[ProbeTimes] = (),
    ) -> None:
        self.left = {"teacher": teacher_epochs, "student": student_epochs * student_runs}
        self.runs_left = 1 + student_runs
        self.probes_total = probes_per_run * student_runs
        self._probe_clocks = probe_clocks
        self._probe_mark = 0.0  # the probes' seconds when the last epoch ended
        self._seconds = {"teacher": 0.0, "student": 0.0}
        self._done = {"teacher": 0, "student": 0}

    def _probe_seconds(self) -> float:
        return sum(clock.seconds for clock in self._probe_clocks)

    def epoch_done(self, kind: str, seconds: float) -> None:
        probes = self._probe_seconds()
        within, self._probe_mark = probes - self._probe_mark, probes
        self.left[kind] = max(0, self.left[kind] - 1)
        self._seconds[kind] += max(0.0, seconds - within)
        self._done[kind] += 1

    def run_done(self) -> None:
        self.runs_left = max(0, self.runs_left - 1)

    def seconds_left(self) -> float | None:
        """Seconds to the last epoch's end, or ``None`` before any epoch has ended."""
        rates = {kind: self._seconds[kind] / self._done[kind] for kind in self._done if self._done[kind]}
        if not rates:
            return None
        student = rates.get("student", rates.get("teacher", 0.0))
        epochs = self.left["teacher"] * rates.get("teacher", student) + self.left["student"] * student
        probes_done = sum(clock.probes for clock in self._probe_clocks)
        if not probes_done:
            return epochs
        return epochs + max(0, self.probes_total - probes_done) * self._probe_seconds() / probes_done

    def describe(self) -> str:
        """``"demo: 3 runs left, about 4 min"``, or without the time before any epoch has ended."""
        left = self.seconds_left()
        runs = f"{self.runs_left} run{'s' if self.runs_left != 1 else ''} left"
        return f"demo: {runs}" + ("" if left is None else f", about {duration(left)}")


class EpochTimer(pl.Callback):
    """Tells a ``DemoClock`` when each training epoch of one run ends (and, with ``ends_run``, when the run
    ends); list it after the probes, so that its hooks run after theirs and an epoch's seconds include them."""

    def __init__(self, clock: DemoClock, kind: str, ends_run: bool = True) -> None:
        self.clock, self.kind, self.ends_run, self._mark = clock, kind, ends_run, 0.0

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self.clock.epoch_done(self.kind, now - self._mark)
        self._mark = now

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ends_run:  # not the first of a two-phase run's fits
            self.clock.run_done()


class DemoProgressBar(TQDMProgressBar):
    """Lightning's progress bar with the whole demo's time left (``demo_left``) among its numbers."""

    def __init__(self, clock: DemoClock) -> None:
        super().__init__()
        self.clock = clock

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        left = self.clock.seconds_left()
        if left is not None:
            metrics["demo_left"] = duration(left)
        return metrics
