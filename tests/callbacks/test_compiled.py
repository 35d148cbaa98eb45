"""Every probe on a student compiled in place with ``nn.Module.compile()`` (issue 28).

The compiled module stays the same object, so the probes cannot step around it by unwrapping (as they do for the
``torch.compile`` wrapper); they run its eager forward instead (:func:`kd_probe.core.layers.uncompiled`). For each
probe, and for the student or one of its submodules compiled in place, a fit with the compiled student is
compared with the same fit of the eager student and with the compiled fit without the probe: the same logged
values and history (no failed entry, no setup error), the same trained weights, and as many compilations
(dynamo's compile counter). The backends ``eager`` and ``aot_eager`` train bitwise as the eager student does;
``inductor``, whose kernels round differently, is checked in a slow test.
"""

import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounterWithBackend

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, UniCAMProbe, WeightTrajectoryMonitor
from kd_probe.io.tags import GROUPS
from kd_probe.models import VGG
from tests.callbacks.conftest import PROBE, RecordingLogger, tiny_data, tiny_net, trainer

# dynamo's graphs run as captured ("eager") or through AOTAutograd's forward and backward graphs ("aot_eager",
# inductor's path without its code generation): both fast, and bitwise the eager arithmetic
BACKENDS = ["eager", "aot_eager"]

# a probe given the data module and the prefix of the student's layer names
PROBES: dict[str, Callable[[Any, str], Any]] = {
    "knowledge_points": lambda data, prefix: KnowledgePointProbe(
        data, layer=prefix + "features.bn2", log_images=0, **dict(PROBE, steps=10)
    ),
    "agreement": lambda data, prefix: AgreementProbe(
        data, teacher_layer="features.relu2", student_layer=prefix + "features.relu2", transforms=("shift",)
    ),
    "unicam": lambda data, prefix: UniCAMProbe(
        data,
        layers=[(prefix + "features.relu2", "features.relu2")],
        cam_layer=(prefix + "features.relu2", "features.relu2"),
    ),
    "weights": lambda data, prefix: WeightTrajectoryMonitor(),
}


def _whole() -> tuple[nn.Module, nn.Module, str]:
    student = tiny_net()
    return student, student, ""


def _submodule() -> tuple[nn.Module, nn.Module, str]:
    student = nn.Sequential(OrderedDict(net=tiny_net()))
    return student, student.net, "net."


# the student, the part of it compiled in place, and the prefix of the layer names
LAYOUTS: dict[str, Callable[[], tuple[nn.Module, nn.Module, str]]] = {"student": _whole, "submodule": _submodule}


@dataclass
class _Run:
    logged: dict[str, list[tuple[int, float]]]
    history: list[dict[str, Any]] | None
    weights: dict[str, Tensor]
    compilations: int
    still_compiled: bool


def _fit(root: Path, layout: str, probe: str | None, backend: str | None) -> _Run:
    """A short distillation fit with the probe (none: ``None``), the student compiled in place as ``layout`` says
    with ``backend`` (eager: ``None``)."""
    torch._dynamo.reset()  # each run compiles from scratch
    data = tiny_data()
    student, part, prefix = LAYOUTS[layout]()
    counter = CompileCounterWithBackend(backend or "eager")
    if backend is not None:
        part.compile(backend=counter)
    torch.manual_seed(1)
    teacher = VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)
    probes = [PROBES[probe](data, prefix)] if probe else []
    logger = RecordingLogger()
    torch.manual_seed(0)  # the same shuffled batches in every run
    trainer(root, max_epochs=1, logger=logger, callbacks=probes).fit(
        DistillationModule(student, teacher), datamodule=data
    )
    return _Run(
        logger.values,
        getattr(probes[0], "history", None) if probes else None,
        {name: value.detach().clone() for name, value in student.state_dict().items()},
        int(counter.frame_count),
        part.__dict__.get("_compiled_call_impl") is not None,
    )


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str | None, str | None], _Run]:
    """:func:`_fit`, each fit done once (the eager and the unprobed fits serve several cases)."""
    runs: dict[tuple[str, str | None, str | None], _Run] = {}

    def fit(layout: str, probe: str | None, backend: str | None) -> _Run:
        key = (layout, probe, backend)
        if key not in runs:
            runs[key] = _fit(tmp_path_factory.mktemp("fit"), *key)
        return runs[key]

    return fit


def _assert_same_values(actual: Any, expected: Any, where: str) -> None:
    """Equal values, bitwise: tensors of the same dtype and shape with the same elements (NaN equal to NaN)."""
    if isinstance(expected, Tensor):
        assert isinstance(actual, Tensor), where
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=where)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same_values(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_same_values(a, e, f"{where}[{index}]")
    elif isinstance(expected, float) and expected != expected:
        assert isinstance(actual, float) and actual != actual, where
    else:
        assert actual == expected, where


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("probe", list(PROBES))
def test_a_probe_of_a_student_compiled_in_place_gives_the_eager_values_and_never_recompiles(
    probe: str, layout: str, backend: str, fits: Callable[[str, str | None, str | None], _Run]
) -> None:
    eager, compiled, plain = fits(layout, probe, None), fits(layout, probe, backend), fits(layout, None, backend)

    assert any(tag.split("/", 1)[0] in GROUPS for tag in eager.logged), "the probe logged nothing"
    assert compiled.logged.keys() == eager.logged.keys()
    _assert_same_values(compiled.logged, eager.logged, "logged")
    if compiled.history is not None:
        assert len(compiled.history) == 2 and all(entry.get("failed") is None for entry in compiled.history)
        _assert_same_values(compiled.history, eager.history, "history")
    _assert_same_values(compiled.weights, plain.weights, "weights")  # the probe left training alone
    _assert_same_values(compiled.weights, eager.weights, "weights")  # and compiling changed no arithmetic
    assert plain.compilations >= 1 and compiled.compilations == plain.compilations
    assert compiled.still_compiled  # the user's module is compiled as before


@pytest.mark.slow
@pytest.mark.skipif(not any(map(shutil.which, ("c++", "g++", "clang++"))), reason="inductor needs a C++ compiler")
@pytest.mark.parametrize("probe", list(PROBES))
def test_with_inductor_a_probe_never_recompiles_nor_changes_the_training(
    probe: str, fits: Callable[[str, str | None, str | None], _Run]
) -> None:
    """Inductor's kernels round differently from the eager ones, so only the values before the first update (the
    weights then equal the eager run's) are the eager ones; the first fit compiles for about half a minute."""
    eager, compiled, plain = (
        fits("student", probe, None),
        fits("student", probe, "inductor"),
        fits("student", None, "inductor"),
    )
    assert compiled.logged.keys() == eager.logged.keys()
    for tag, values in compiled.logged.items():
        if tag.split("/", 1)[0] in GROUPS:
            before = [value for step, value in values if step == 0]
            _assert_same_values(before, [value for step, value in eager.logged[tag] if step == 0], tag)
    assert all(entry.get("failed") is None for entry in compiled.history or [])
    _assert_same_values(compiled.weights, plain.weights, "weights")
    assert plain.compilations >= 1 and compiled.compilations == plain.compilations
    assert compiled.still_compiled
