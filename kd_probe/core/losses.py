"""Distillation losses (pure torch)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_temperature", "feature_distillation_loss", "logit_distillation_loss"]


def logit_distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's logit distillation loss ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, KL averaged per batch.

    ``KL(p ‖ q) = Σ_k p_k (log p_k − log q_k)`` summed over classes and divided by the batch size
    (``reduction="batchmean"``), the same quantity as torchdistill's ``KDLoss`` and mdistiller's
    ``kd_loss``. The ``T²`` factor keeps gradient magnitudes comparable across temperatures.

    Args:
        student_logits: ``[B, K]`` logits of the student.
        teacher_logits: ``[B, K]`` logits of the teacher (no gradient is needed).
        temperature: softening temperature ``T > 0``.

    Example::

        >>> s = torch.tensor([[1.0, 2.0, 0.5]]); t = torch.tensor([[2.0, 1.0, 0.0]])
        >>> round(float(logit_distillation_loss(s, t, temperature=2.0)), 4)
        0.4185
    """
    check_temperature(temperature)
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits, rank=2)
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def check_temperature(temperature: object) -> None:
    """``temperature`` must be a finite number > 0 (a bool is not a number here)."""
    number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and math.isfinite(temperature)
    if not number or not temperature > 0:  # type: ignore[operator]
        kind = "" if number else " (a finite number is expected; bools and strings are not numbers here)"
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}{kind}.")


def _check_pair(
    student_name: str, student: Tensor, teacher_name: str, teacher: Tensor, rank: int | None = None
) -> None:
    for name, value in ((student_name, student), (teacher_name, teacher)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or (rank and value.dim() != rank):
            described = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            expected = "float logits [B, K]" if rank == 2 else "a float tensor"
            raise ValueError(f"`{name}` must be {expected}, got {described}.")
    if student.shape != teacher.shape:
        raise ValueError(
            f"`{student_name}` {tuple(student.shape)} and `{teacher_name}` {tuple(teacher.shape)} must have the "
            "same shape."
        )


def feature_distillation_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Feature (hint) distillation loss: mean squared error between the two features.

    The student feature is already adapted to the teacher's shape (FitNets' regressor). Used for the
    feature KD of ``feature_pairs`` and for phase 1 of the knowledge-point protocol (methods §1.7), where
    it is the only loss.
    """
    _check_pair("student_feature", student_feature, "teacher_feature", teacher_feature)
    return F.mse_loss(student_feature, teacher_feature)
