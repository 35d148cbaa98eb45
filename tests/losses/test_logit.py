"""The logit methods as modules (methods §6.4–§6.7): the papers' defaults, ``forward`` is the functional, nothing to
learn or build, and a bad hyper-parameter refused in ``__init__``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kd_probe.core.kd.logit import dist, dkd, kd, logit_standard_kd
from kd_probe.losses._base import DistillationLoss
from kd_probe.losses.logit import DIST, DKD, KD, LogitStandardKD


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, generator=generator) * 3
    return student, teacher, torch.tensor([0, 4, 2, 1])


@pytest.mark.parametrize(
    ("loss", "defaults"),
    [
        (KD(), {"temperature": 4.0}),  # mdistiller's CIFAR-100 KD
        (DKD(), {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20.0}),  # mdistiller's CFG.DKD
        (DIST(), {"beta": 1.0, "gamma": 1.0, "temperature": 1.0}),  # the authors' DIST(beta=1, gamma=1, tau=1)
        (LogitStandardKD(), {"temperature": 2.0}),  # the authors' --base-temp 2
    ],
    ids=lambda v: type(v).__name__,
)
def test_defaults_are_the_authors(loss: DistillationLoss, defaults: dict[str, float]) -> None:
    assert loss.hyperparameters() == defaults
    assert loss.kind == "logit" and loss.weight == 1.0 and not loss.needs_indices
    assert loss.student_layers is None and loss.teacher_layers is None
    assert all(f"{name}={value!r}" in repr(loss) for name, value in defaults.items())


def test_forward_is_the_functional() -> None:
    student, teacher, labels = batch()
    settings = {"temperature": 3.0}
    assert torch.equal(KD(**settings)(student, teacher, labels), kd(student, teacher, **settings))
    assert torch.equal(KD()(student, teacher), kd(student, teacher))
    dkd_settings = {"alpha": 2.0, "beta": 0.5, "temperature": 3.0, "warmup": 4}
    assert torch.equal(DKD(**dkd_settings)(student, teacher, labels), dkd(student, teacher, labels, **dkd_settings))
    assert torch.equal(
        DKD(**dkd_settings)(student, teacher, labels, epoch=2), dkd(student, teacher, labels, **dkd_settings, epoch=2)
    )
    assert float(DKD(warmup=4)(student, teacher, labels, epoch=2)) == pytest.approx(
        0.5 * float(dkd(student, teacher, labels))
    )
    dist_settings = {"beta": 2.0, "gamma": 0.5, "temperature": 4.0}
    assert torch.equal(DIST(**dist_settings)(student, teacher, labels), dist(student, teacher, **dist_settings))
    assert torch.equal(LogitStandardKD(**settings)(student, teacher), logit_standard_kd(student, teacher, **settings))


def test_weight_is_kept_for_the_module_and_not_applied_by_forward() -> None:
    student, teacher, _ = batch()
    loss = LogitStandardKD(weight=9.0)
    assert loss.weight == 9.0 and torch.equal(loss(student, teacher), logit_standard_kd(student, teacher))


@pytest.mark.parametrize("loss", [KD(), DKD(), DIST(), LogitStandardKD()], ids=lambda v: type(v).__name__)
def test_nothing_to_learn_or_build(loss: DistillationLoss) -> None:
    assert list(loss.parameters()) == [] and loss.state_dict() == {}
    student, teacher, labels = batch()
    student.requires_grad_(True)
    loss(student, teacher, labels).backward()  # no build needed
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_dkd_says_it_needs_the_labels() -> None:
    student, teacher, _ = batch()
    with pytest.raises(ValueError, match=r"DKD needs the class labels: pass `labels`"):
        DKD()(student, teacher)


BAD: list[tuple[type[DistillationLoss], dict[str, Any], str]] = [
    (KD, {"temperature": 0.0}, r"`temperature` must be a finite number > 0, got 0.0"),
    (KD, {"weight": -1.0}, r"`weight` must be a finite number ≥ 0, got -1.0"),
    (DKD, {"alpha": -1.0}, r"`alpha` must be a finite number ≥ 0, got -1.0"),
    (DKD, {"beta": float("nan")}, r"`beta` must be a finite number ≥ 0, got nan"),
    (DKD, {"temperature": True}, r"`temperature` must be a finite number > 0, got True"),
    (DKD, {"warmup": -20}, r"`warmup` must be a finite number ≥ 0, got -20"),
    (DIST, {"beta": "1"}, r"`beta` must be a finite number ≥ 0, got '1'"),
    (DIST, {"gamma": -2.0}, r"`gamma` must be a finite number ≥ 0, got -2.0"),
    (DIST, {"temperature": float("inf")}, r"`temperature` must be a finite number > 0, got inf"),
    (LogitStandardKD, {"temperature": -2.0}, r"`temperature` must be a finite number > 0, got -2.0"),
]


@pytest.mark.parametrize(("cls", "kwargs", "match"), BAD, ids=lambda v: getattr(v, "__name__", None))
def test_bad_hyper_parameters_are_refused_in_init(cls: type[DistillationLoss], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
