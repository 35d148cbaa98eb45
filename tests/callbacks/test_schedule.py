"""When the probes measure: ``ProbeSchedule`` and the public ``probe_epochs``."""

from __future__ import annotations

import pytest

from kd_probe.callbacks import KnowledgePointProbe, probe_epochs
from kd_probe.callbacks.schedule import ProbeSchedule
from tests.callbacks.conftest import PROBE, tiny_data


def test_schedules() -> None:
    assert ProbeSchedule("paper", None).resolve(30) == [0, 1, 2, 3, 4, 5, 6, 8, 10, 14, 18, 22, 26, 30]
    assert ProbeSchedule("paper", None).resolve(150)[-3:] == [110, 130, 150]
    assert ProbeSchedule([5, 0, 5, 2], None).resolve(10) == [0, 2, 5]
    assert ProbeSchedule(None, 3).resolve(10) == [0, 3, 6, 9]
    assert ProbeSchedule(None, None).resolve(3) == [0, 1, 2, 3]
    assert ProbeSchedule(None, 2).includes(4, None) and not ProbeSchedule(None, 2).includes(3, None)


@pytest.mark.parametrize(("epochs", "every_n_epochs"), [("paper", None), ([7, 0, 3], None), (None, 4), (None, None)])
def test_probe_epochs_are_what_the_probe_probes(epochs: object, every_n_epochs: int | None) -> None:
    probe = KnowledgePointProbe(
        tiny_data(), layer="features.bn2", epochs=epochs, every_n_epochs=every_n_epochs, **PROBE
    )
    assert probe_epochs(epochs, every_n_epochs, max_epochs=12) == probe.schedule.resolve(12)
    assert [e for e in range(13) if probe.schedule.includes(e, 12)] == probe_epochs(
        epochs, every_n_epochs, max_epochs=12
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"epochs": "paper", "max_epochs": None}, "needs Trainer(max_epochs=...)"),
        ({"epochs": [1], "every_n_epochs": 2, "max_epochs": 5}, "Give `epochs` or `every_n_epochs`, not both."),
        ({"epochs": "often", "max_epochs": 5}, "`epochs` must be a list of epochs or 'paper', got 'often'."),
        ({"every_n_epochs": 0, "max_epochs": 5}, "`every_n_epochs` must be an integer ≥ 1, got 0."),
    ],
)
def test_probe_epochs_refuses_bad_input_in_one_sentence(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        probe_epochs(**arguments)
