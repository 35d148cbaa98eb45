"""Logit distillation methods in pure torch (methods §6.4–§6.7): KD, DKD, DIST and KD on standardised logits.

Each function takes the student's and the teacher's logits ``[B, K]``, returns a scalar averaged over the batch and
detaches the teacher's logits, so that only the student receives a gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_probe.core.losses import _check_pair, check_temperature, logit_distillation_loss

__all__ = ["dist", "dkd", "kd", "logit_standard_kd"]

_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al.'s logit distillation, ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` averaged over the batch.

    Hinton, Vinyals, Dean, 2015, *Distilling the Knowledge in a Neural Network* (methods §6.4, derived in §6.1).
    The very same number as :func:`kd_probe.core.losses.logit_distillation_loss` (this calls it), with the
    teacher's logits detached. Default ``T = 4``: mdistiller's CIFAR-100 setting (``CFG.KD.TEMPERATURE``), also the
    project's ``DistillationModule`` default.

    Args:
        student_logits: ``[B, K]`` logits of the student.
        teacher_logits: ``[B, K]`` logits of the teacher (detached here).
        temperature: softening temperature ``T > 0``.

    Example::

        >>> s = torch.tensor([[1.0, 1.0, 2.0]]).log(); t = torch.tensor([[2.0, 1.0, 1.0]]).log()
        >>> round(float(kd(s, t, temperature=1.0)), 6)  # ¼·ln 2
        0.173287
    """
    check_temperature(temperature)
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits, rank=2)
    return logit_distillation_loss(student_logits, teacher_logits.detach(), temperature)


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    warmup: float = 20,
    epoch: float | None = None,
) -> Tensor:
    """Decoupled knowledge distillation, ``DKD = T² · (α · TCKD + β · NCKD)`` averaged over the batch.

    Zhao, Cui, Song, Qiu, Liang, 2022, *Decoupled Knowledge Distillation* (CVPR), methods §6.5. With
    ``p = softmax(z/T)`` and the sample's class ``y``:

    - **TCKD** (target-class KD): ``KL(b_T ‖ b_S)`` between the binary distributions ``b = [p_y, 1 − p_y]``;
    - **NCKD** (non-target-class KD): ``KL(p̂_T ‖ p̂_S)`` between the distributions over the ``K − 1`` other
      classes, ``p̂_k = p_k / (1 − p_y)`` (a softmax over the non-target logits).

    The paper's decomposition ``KL(p_T ‖ p_S) = TCKD + (1 − p_T,y) · NCKD`` holds per sample: KD ties NCKD's weight
    to the teacher's confidence; DKD frees it. Both terms are computed in log space (log-sum-exp), never as
    ``log(1 − p_y)`` of a rounded probability.

    Defaults: the authors' code (mdistiller, ``CFG.DKD``) on CIFAR-100, ``α = 1``, ``β = 8``, ``T = 4``,
    ``warmup = 20`` (their per-pair configs lower ``β`` to 2 or 6 for some pairs; ImageNet uses ``β = 0.5``,
    ``T = 1``, ``warmup = 1``). mdistiller multiplies the loss by ``min(epoch / warmup, 1)``, its epochs counted
    from 1; here the factor applies only when ``epoch`` is given (``None``: no warm-up), so that the loss of one
    batch does not depend on hidden state. From Lightning pass ``trainer.current_epoch + 1``.

    Args:
        student_logits: ``[B, K]`` logits of the student, ``K ≥ 2``.
        teacher_logits: ``[B, K]`` logits of the teacher (detached here).
        labels: ``[B]`` class indices in ``[0, K)``; DKD needs them.
        alpha: weight ``α ≥ 0`` of TCKD.
        beta: weight ``β ≥ 0`` of NCKD.
        temperature: softening temperature ``T > 0``.
        warmup: epochs ``≥ 0`` over which the loss ramps up linearly (``0``: none); used only with ``epoch``.
        epoch: the current epoch counted from 1, ``≥ 0`` (``None``: no warm-up factor).

    Example::

        >>> s = torch.tensor([[1.0, 1.0, 2.0]]).log(); t = torch.tensor([[2.0, 1.0, 1.0]]).log()
        >>> round(float(dkd(s, t, torch.tensor([0]), temperature=1.0)), 6)  # ½·ln(4/3) + 8·½·ln(9/8)
        0.614973
    """
    _check_number("alpha", alpha, zero=True)
    _check_number("beta", beta, zero=True)
    check_temperature(temperature)
    _check_number("warmup", warmup, zero=True)
    if epoch is not None:
        _check_number("epoch", epoch, zero=True)
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits, rank=2)
    targets = _check_labels(labels, student_logits)
    tckd, nckd = _decoupled_terms(student_logits, teacher_logits.detach(), targets, temperature)
    loss = (alpha * tckd + beta * nckd).mean() * temperature**2
    if epoch is not None and warmup > 0:
        loss = loss * min(epoch / warmup, 1.0)
    return loss


def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """DIST, ``τ² · (β · inter + γ · intra)``: one minus Pearson correlations of the softened predictions.

    Huang, You, Wang, Qian, Xu, 2022, *Knowledge Distillation from A Stronger Teacher* (NeurIPS), methods §6.6.
    With ``Y = softmax(z/τ)`` ``[B, K]`` for each network:

    - **inter-class relation**: ``1 − ρ(Y_S[i, :], Y_T[i, :])`` averaged over the samples ``i`` (each sample's
      prediction over the classes);
    - **intra-class relation**: ``1 − ρ(Y_S[:, k], Y_T[:, k])`` averaged over the classes ``k`` (each class's
      probability across the batch),

    ``ρ`` the Pearson correlation, computed as the authors' code does: the cosine of the centred vectors with ``ε``
    added to the product of their norms, so that a constant vector (a batch of one sample, for the intra-class
    term) has correlation 0 and that term is the constant 1 (no gradient).

    Defaults: the authors' loss (``DIST(beta=1, gamma=1, tau=1)`` in hunto/image_classification_sota), the
    ImageNet setting. The authors' runs weight the whole loss by 2 (``kd_loss_weight: 2``, the paper's
    ``β = γ = 2``), and on CIFAR-100 use ``τ = 4`` (``kd: dist_t4``): ``dist(..., temperature=4.0)`` weighted 2.

    Args:
        student_logits: ``[B, K]`` logits of the student.
        teacher_logits: ``[B, K]`` logits of the teacher (detached here).
        beta: weight ``β ≥ 0`` of the inter-class relation.
        gamma: weight ``γ ≥ 0`` of the intra-class relation.
        temperature: softening temperature ``τ > 0``.
        eps: ``ε > 0`` added to the norms' product in ``ρ`` (the authors' ``1e-8``).

    Example::

        >>> s = torch.tensor([[1.0, 2.0, 5.0], [5.0, 1.0, 2.0]]).log()
        >>> t = torch.tensor([[1.0, 2.0, 5.0], [2.0, 5.0, 1.0]]).log()
        >>> round(float(dist(s, t)), 6)  # inter 1 − (1 − ½)/2 = ¾, intra 1 − (1 − 1 + 1)/3 = ⅔
        1.416667
    """
    _check_number("beta", beta, zero=True)
    _check_number("gamma", gamma, zero=True)
    check_temperature(temperature)
    _check_number("eps", eps)
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits, rank=2)
    student = (student_logits / temperature).softmax(dim=-1)
    teacher = (teacher_logits.detach() / temperature).softmax(dim=-1)
    inter = 1 - _pearson(student, teacher, eps).mean()
    intra = 1 - _pearson(student.t(), teacher.t(), eps).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def _pearson(first: Tensor, second: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``first`` with the same row of ``second`` (``[N, M]`` → ``[N]``): the
    cosine of the centred rows, ``ε`` added to the product of their norms."""
    first = first - first.mean(dim=-1, keepdim=True)
    second = second - second.mean(dim=-1, keepdim=True)
    return (first * second).sum(dim=-1) / (first.norm(dim=-1) * second.norm(dim=-1) + eps)


def logit_standard_kd(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0, eps: float = 1e-7
) -> Tensor:
    """KD on z-scored logits: :func:`kd` at temperature ``τ`` after each sample's logits are standardised.

    Sun, Ren, Li, Wang, Cao, 2024, *Logit Standardization in Knowledge Distillation* (CVPR), methods §6.7.
    ``Z(z) = (z − mean(z)) / (σ(z) + ε)`` over the classes of each sample, for student and teacher alike, then
    ``τ² · KL(softmax(Z(t)/τ) ‖ softmax(Z(s)/τ))``: the student matches the teacher's logits up to a shift and a
    positive scale per sample, not their magnitude. ``σ`` is the population standard deviation (``1/K``), as in the
    paper's Algorithm 1; the authors' code uses ``torch.std`` (``1/(K − 1)``), which softens both softmaxes as a
    base temperature ``√(K/(K − 1))`` times larger would (0.5 % for ``K = 100``). ``ε = 1e-7`` added to ``σ``: the
    authors' code.

    Default ``τ = 2``: the authors' base temperature on CIFAR-100 (``--base-temp 2``). Their runs weight this loss 9
    against a cross-entropy weighted 0.1 (``--kd-weight 9``), where mdistiller's KD uses 0.9.

    Args:
        student_logits: ``[B, K]`` logits of the student.
        teacher_logits: ``[B, K]`` logits of the teacher (detached here).
        temperature: base temperature ``τ > 0``.
        eps: ``ε > 0`` added to each sample's standard deviation.

    Example::

        >>> s = torch.tensor([[0.0, 1.0, 2.0]])
        >>> round(float(logit_standard_kd(s, torch.tensor([[2.0, 1.0, 0.0]]))), 4)
        1.8844
        >>> abs(float(logit_standard_kd(s, 2 * s + 3))) < 1e-6  # the same logits up to shift and scale
        True
    """
    check_temperature(temperature)
    _check_number("eps", eps)
    _check_pair("student_logits", student_logits, "teacher_logits", teacher_logits, rank=2)
    return kd(_standardise(student_logits, eps), _standardise(teacher_logits.detach(), eps), temperature)


def _standardise(logits: Tensor, eps: float) -> Tensor:
    """Each row's z-score ``(z − mean) / (σ + ε)``, ``σ`` the population standard deviation over the classes."""
    centred = logits - logits.mean(dim=-1, keepdim=True)
    return centred / (logits.std(dim=-1, correction=0, keepdim=True) + eps)


def _decoupled_terms(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample ``(TCKD, NCKD)``, each ``[B]``, at temperature ``T`` and without the ``T²`` factor."""
    batch, classes = student_logits.shape
    target = F.one_hot(labels.long(), classes).bool()
    log_binary, log_others = [], []
    for logits in (student_logits / temperature, teacher_logits / temperature):
        log_total = logits.logsumexp(dim=-1)
        others = logits[~target].view(batch, classes - 1)
        # log b = [log p_y, log(1 − p_y)] = [z_y − lse(z), lse(z without y) − lse(z)]: no log of a rounded 1 − p_y
        log_binary.append(torch.stack((logits[target] - log_total, others.logsumexp(dim=-1) - log_total), dim=-1))
        log_others.append(others.log_softmax(dim=-1))
    tckd = F.kl_div(log_binary[0], log_binary[1], reduction="none", log_target=True).sum(dim=-1)
    nckd = F.kl_div(log_others[0], log_others[1], reduction="none", log_target=True).sum(dim=-1)
    return tckd, nckd


def _check_number(name: str, value: object, *, zero: bool = False) -> None:
    """A finite number > 0 (≥ 0 with ``zero=True``), else one sentence naming the argument and the value."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (value >= 0 if zero else value > 0):  # type: ignore[operator]
        raise ValueError(f"`{name}` must be a finite number {'≥ 0' if zero else '> 0'}, got {value!r}.")


def _check_labels(labels: object, logits: Tensor) -> Tensor:
    """``labels`` as a ``[B]`` tensor of class indices of ``logits`` ``[B, K]``, else one sentence."""
    batch, classes = logits.shape
    if labels is None:
        raise ValueError("DKD needs the class labels: pass `labels`, a [B] tensor of class indices.")
    if not isinstance(labels, Tensor) or labels.dtype not in _INDEX_DTYPES or labels.shape != (batch,):
        described = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"`labels` must be a [{batch}] tensor of integer class indices, got {described}.")
    if classes < 2:
        raise ValueError(
            f"DKD needs at least 2 classes (a target and a non-target class), got logits {tuple(logits.shape)}."
        )
    low, high = (int(labels.min()), int(labels.max())) if labels.numel() else (0, 0)
    if low < 0 or high >= classes:
        raise ValueError(f"`labels` must be class indices in [0, {classes}), got values from {low} to {high}.")
    return labels
