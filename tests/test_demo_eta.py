"""The demo's estimate of the time it has left."""

import pytest

from kd_probe._demo_eta import DemoClock, duration


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
