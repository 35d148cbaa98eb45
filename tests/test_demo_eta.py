"""The demo's estimate of the time it has left."""

import pytest

from kd_probe.apps.demo.eta import DemoClock, duration


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "5 s"), (12, "10 s"), (88, "90 s"), (95, "2 min"), (1799, "30 min"), (3900, "1 h 05 min")]
)
def test_durations_read_as_a_human_would_say_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_nothing_is_promised_before_an_epoch_has_ended() -> None:
    clock = DemoClock(teacher_epochs=10, student_epochs=10, student_runs=2)
    assert clock.seconds_left() is None
    assert clock.describe() == "demo: 3 runs left"


def test_students_cost_a_teacher_epoch_until_one_has_run_then_their_own() -> None:
    clock = DemoClock(teacher_epochs=2, student_epochs=3, student_runs=2)
    clock.epoch_done("teacher", 10.0)
    assert clock.seconds_left() == pytest.approx(1 * 10 + 6 * 10)
    clock.epoch_done("teacher", 20.0)
    clock.run_done()
    assert clock.seconds_left() == pytest.approx(6 * 15)
    clock.epoch_done("student", 4.0)  # the students' own rate, probes included
    assert clock.seconds_left() == pytest.approx(5 * 4)
    assert clock.describe() == "demo: 2 runs left, about 20 s"
    for _ in range(5):
        clock.epoch_done("student", 4.0)
    clock.run_done()
    clock.run_done()
    assert clock.seconds_left() == 0 and clock.describe().startswith("demo: 0 runs left")


class _ProbeClock:
    def __init__(self) -> None:
        self.seconds, self.probes = 0.0, 0

    def probe(self, seconds: float) -> None:
        self.seconds += seconds
        self.probes += 1


def test_probes_are_counted_per_probe_not_spread_over_the_epochs() -> None:
    """The demo probes its first epochs most: a rate per epoch that included them would count them again in
    every later epoch (the --full demo once said 1 h 52 min where under 30 min were left)."""
    clocks: list[_ProbeClock] = []
    clock = DemoClock(teacher_epochs=1, student_epochs=4, student_runs=2, probes_per_run=3, probe_clocks=clocks)
    clock.epoch_done("teacher", 1.0)
    clock.run_done()
    assert clock.seconds_left() == pytest.approx(8 * 1.0)  # no probe has run: epochs only
    clocks.append(_ProbeClock())
    clocks[0].probe(10.0)  # epoch 0, before training
    clocks[0].probe(10.0)  # after epoch 1
    clock.epoch_done("student", 2.0 + 20.0)  # 2 s of training and both probes
    # 7 student epochs of 2 s, and 6 - 2 = 4 probes of 10 s
    assert clock.seconds_left() == pytest.approx(7 * 2.0 + 4 * 10.0)
    clock.epoch_done("student", 4.0)  # no probe in this epoch: training alone
    assert clock.seconds_left() == pytest.approx(6 * 3.0 + 4 * 10.0)
    clock.epoch_done("student", 3.0)
    clocks[0].probe(30.0)  # the run's last probe, after epoch 4
    clock.epoch_done("student", 3.0 + 30.0)
    clock.run_done()
    # the next run: 4 epochs at (2 + 4 + 3 + 3) / 4 s and its 3 probes at 50 / 3 s
    assert clock.seconds_left() == pytest.approx(4 * 3.0 + 3 * 50.0 / 3)
