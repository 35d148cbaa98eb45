"""Distillation losses (pure torch)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["feature_distillation_loss", "logit_distillation_loss"]


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
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape."
        )
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def feature_distillation_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Feature (hint) distillation loss: mean squared error between the two features.

    The student feature is already adapted to the teacher's shape (FitNets' regressor). Used for the
    feature KD of ``feature_pairs`` and for phase 1 of the knowledge-point protocol (spec §1.7), where
    it is the only loss.
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"student feature {tuple(student_feature.shape)} and teacher feature "
            f"{tuple(teacher_feature.shape)} must have the same shape."
        )
    return F.mse_loss(student_feature, teacher_feature)
