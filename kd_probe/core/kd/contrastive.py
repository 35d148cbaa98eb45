"""Contrastive distillation (methods §6.16), pure torch: the NCE objective of CRD (Tian, Krishnan & Isola 2020).

The memory banks, the sampling of negatives and their momentum updates are state, kept by the class
:class:`kd_probe.losses.CRD`; the functions here are the math on tensors already embedded and sampled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kd_probe.core.losses import check_temperature

__all__ = ["crd", "crd_normalization"]


def crd(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    normalization: float | Tensor,
    num_samples: int,
    temperature: float = 0.07,
) -> Tensor:
    """The NCE objective of Contrastive Representation Distillation, one direction (methods §6.16).

    Tian, Krishnan & Isola (2020), *Contrastive Representation Distillation*, ICLR, §3. For each
    anchor ``a_i`` (an embedding of sample ``i``), its positive ``p_i`` (the other network's memory-bank row of the
    same sample) and ``K`` negatives ``n_ij`` (that bank's rows of other samples), with ``N`` = ``num_samples``
    rows in the bank::

        P(v)  = exp(⟨a, v⟩ / τ) / Z                  # Z: the normalisation constant
        h(v)  = P(v) / (P(v) + K / N)                # the critic: odds of "matching pair" against K noise draws
        loss  = −(1/B) Σ_i [ log h(p_i) + Σ_j log(1 − h(n_ij)) ]

    ``K / N`` is ``K`` times the uniform noise density ``1/N``; ``h`` is the paper's critic
    ``e^{⟨t,s⟩/τ} / (e^{⟨t,s⟩/τ} + K/N)`` with the constant ``Z`` of the authors' code (RepDistiller
    ``crd/memory.py``), which :func:`crd_normalization` estimates once, on the first batch. CRD sums this loss over two directions — teacher anchor against the student bank, and student
    anchor against the teacher bank — in :class:`kd_probe.losses.CRD`. Computed in log space (``logaddexp``), so
    no ``eps`` is needed (the authors add ``1e-7`` to the denominators; with ``K/N ≈ 0.33`` it changes nothing).

    Defaults (authors' CIFAR-100 code, RepDistiller ``train_student.py``): ``τ = 0.07`` (``--nce_t``), with
    ``K = 16384`` negatives (``--nce_k``) and ``N = 50000`` samples in the class.

    Args:
        anchor: ``[B, D]`` embeddings, L2-normalised (this function does not normalise); gradients flow to them.
        positive: ``[B, D]`` the positive of each anchor (a memory-bank row); treated as a constant (detached).
        negatives: ``[B, K, D]`` ``K ≥ 1`` negatives per anchor (memory-bank rows); treated as constants.
        normalization: the constant ``Z > 0`` (a number or a 0-dim tensor, e.g. from :func:`crd_normalization`).
        num_samples: ``N ≥ 1``, the number of rows of the memory bank the samples come from (the training set).
        temperature: ``τ > 0``.

    Returns:
        The loss, a 0-dim tensor (mean over anchors of the sum over the positive and the ``K`` negatives).

    Example::

        >>> anchor = torch.tensor([[1.0, 0.0]]); positive = torch.tensor([[1.0, 0.0]])
        >>> negatives = torch.tensor([[[0.0, 1.0], [0.0, -1.0]]])  # ⟨a, p⟩ = 1, ⟨a, n_j⟩ = 0; K/N = 2/4
        >>> # −log(e / (e + 1/2)) − 2·log((1/2) / (1 + 1/2)) = 0.1688 + 2·log 3
        >>> round(float(crd(anchor, positive, negatives, normalization=1.0, num_samples=4, temperature=1.0)), 4)
        2.3661
    """
    check_temperature(temperature)
    log_z = _check_normalization(normalization)
    _check_num_samples(num_samples)
    scores = _scores(anchor, positive, negatives) / temperature  # [B, 1 + K]: the positive first
    log_p = scores - log_z
    log_noise = torch.full_like(log_p, math.log((scores.shape[1] - 1) / num_samples))  # log(K / N)
    log_denominator = torch.logaddexp(log_p, log_noise)  # log(P + K/N)
    log_h_positive = log_p[:, 0] - log_denominator[:, 0]  # log h(p_i)
    log_one_minus_h_negatives = (log_noise[:, 1:] - log_denominator[:, 1:]).sum(dim=1)  # Σ_j log(1 − h(n_ij))
    return -(log_h_positive + log_one_minus_h_negatives).mean()


def crd_normalization(
    anchor: Tensor, positive: Tensor, negatives: Tensor, num_samples: int, temperature: float = 0.07
) -> Tensor:
    """The normalisation constant ``Z`` of CRD, estimated on one batch as in the authors' code (methods §6.16).

    ``Z = N · mean over the B·(1 + K) pairs of exp(⟨a, v⟩ / τ)``, so that ``P(v) = exp(⟨a, v⟩/τ) / Z`` is on
    average ``1/N``, the uniform density (Tian, Krishnan & Isola 2020, *Contrastive Representation Distillation*,
    ICLR; RepDistiller ``crd/memory.py`` sets it from the first batch and then keeps it fixed). Arguments as in
    :func:`crd`; ``temperature`` defaults to the authors' ``0.07``.

    Returns:
        ``Z``, a detached 0-dim float64 tensor (float64: ``exp(1/τ)`` overflows float32 for ``τ < 0.012``).

    Example::

        >>> anchor = torch.tensor([[1.0, 0.0]]); positive = torch.tensor([[0.0, 1.0]])
        >>> negatives = torch.tensor([[[0.0, -1.0]]])       # every score 0: exp(0) = 1, so Z = N
        >>> float(crd_normalization(anchor, positive, negatives, num_samples=50000))
        50000.0
    """
    check_temperature(temperature)
    _check_num_samples(num_samples)
    scores = _scores(anchor, positive, negatives).detach().double() / temperature
    return scores.exp().mean() * num_samples


def _scores(anchor: Tensor, positive: Tensor, negatives: Tensor) -> Tensor:
    """``[B, 1 + K]`` inner products of each anchor with its positive (column 0) and its negatives."""
    for name, value, rank in (("anchor", anchor, 2), ("positive", positive, 2), ("negatives", negatives, 3)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() != rank:
            described = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            shape = "[B, K, D]" if rank == 3 else "[B, D]"
            raise ValueError(f"`{name}` must be a float tensor {shape}, got {described}.")
    batch, dim = anchor.shape
    if positive.shape != anchor.shape or negatives.shape[0] != batch or negatives.shape[2] != dim:
        raise ValueError(
            f"`anchor` {tuple(anchor.shape)}, `positive` {tuple(positive.shape)} and `negatives` "
            f"{tuple(negatives.shape)} must be [B, D], [B, D] and [B, K, D] with the same B and D."
        )
    if negatives.shape[1] < 1:
        raise ValueError(f"`negatives` {tuple(negatives.shape)} must hold at least one negative per anchor (K ≥ 1).")
    dtype = torch.promote_types(torch.promote_types(anchor.dtype, positive.dtype), torch.float32)
    samples = torch.cat([positive.detach().unsqueeze(1), negatives.detach()], dim=1).to(dtype)
    return torch.bmm(samples, anchor.to(dtype).unsqueeze(2)).squeeze(2)


def _check_normalization(normalization: object) -> float:
    """``Z`` as a float (its log is returned), or one sentence."""
    value: object = normalization
    if isinstance(normalization, Tensor) and normalization.numel() == 1 and normalization.is_floating_point():
        value = float(normalization)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not value > 0:  # type: ignore[operator]
        raise ValueError(f"`normalization` (the constant Z) must be a finite number > 0, got {normalization!r}.")
    return math.log(value)  # type: ignore[arg-type]


def _check_num_samples(num_samples: object) -> None:
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"`num_samples` must be an integer ≥ 1 (the memory bank's rows), got {num_samples!r}.")
