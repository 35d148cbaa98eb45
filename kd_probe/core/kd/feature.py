"""Feature-map distillation losses (pure torch): FitNets, AT, NST and VID (methods §6.8–§6.11).

Each function takes the student's and the teacher's features as one tensor or a list of tensors, one per layer
pair, and returns the sum of the per-pair losses. Teacher features are detached: no gradient reaches them.
Learnable parts (FitNets' regressors, VID's mean regressor and variances) live in the classes of
:mod:`kd_probe.losses.feature`; the functions here take their outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_probe.core.losses import feature_distillation_loss

__all__ = ["at", "fitnets", "nst", "vid"]


def fitnets(student_features: Tensor | Sequence[Tensor], teacher_features: Tensor | Sequence[Tensor]) -> Tensor:
    """FitNets' hint loss: the mean squared error between the regressed student hint and the teacher's feature.

    Romero et al., 2015, "FitNets: Hints for Thin Deep Nets" (ICLR), methods §6.8:

    ``L_HT = Σ over pairs of MSE(r(v_S), u_T)``, MSE the mean over all elements.

    The paper writes ``½ ‖u_T − r(v_S)‖²`` summed over a sample's elements and averaged over the batch; the mean
    over elements used here (as in :func:`kd_probe.core.losses.feature_distillation_loss`, torchdistill and
    mdistiller) differs by the constant factor ``numel / 2`` per sample. The student features are the outputs of
    the regressors ``r`` (built by :class:`kd_probe.losses.FitNets`), already of the teacher's shape.

    Args:
        student_features: the regressed student features ``r(v_S)``, one tensor or one per layer pair.
        teacher_features: the teacher's features ``u_T`` of the same shapes (detached).

    Example::

        >>> s = torch.tensor([[1.0, 2.0, 3.0]]); t = torch.tensor([[1.0, 0.0, 0.0]])
        >>> round(float(fitnets(s, t)), 4)  # (0 + 4 + 9) / 3
        4.3333
    """
    pairs = feature_pairs(student_features, teacher_features)
    return torch.stack([feature_distillation_loss(s, t.detach()) for s, t in pairs]).sum()


def at(
    student_features: Tensor | Sequence[Tensor],
    teacher_features: Tensor | Sequence[Tensor],
    beta: float = 1000.0,
    p: float = 2.0,
) -> Tensor:
    """Attention transfer: the distance between the student's and the teacher's normalised spatial attention maps.

    Zagoruyko & Komodakis, 2017, "Paying More Attention to Attention: Improving the Performance of Convolutional
    Neural Networks via Attention Transfer" (ICLR), methods §6.9::

        Q = vec(Σ_c |A_c|^p)                        A: one sample's map [C, H, W], Q ∈ R^{H·W}
        L_AT = β/2 · Σ over pairs of (1/(B·H·W)) Σ_b ‖Q_S/‖Q_S‖₂ − Q_T/‖Q_T‖₂‖₂²

    Defaults as in the authors' code (szagoruyko/attention-transfer): ``p = 2``, ``β = 1000``, the squared
    distance averaged over the batch and the ``H·W`` positions (the paper's "β = 10³ divided by the number of
    elements in the attention map and the batch size"), summed over layer pairs. Channels may differ between
    student and teacher (the sum over channels removes them: no adapter). Maps of different heights or widths are
    matched by adaptive average pooling of the larger to the smaller (:func:`match_spatial_size`).

    Args:
        student_features: student maps ``[B, C_s, H, W]``, one tensor or one per layer pair.
        teacher_features: teacher maps ``[B, C_t, H', W']`` (detached).
        beta: the weight ``β > 0`` of the attention term.
        p: the exponent ``p > 0`` of the attention map.

    Example::

        >>> s = torch.tensor([[[[1.0, 0.0]]]]); t = torch.tensor([[[[0.0, 1.0]]]])
        >>> float(at(s, t))  # Q_S = (1, 0), Q_T = (0, 1): 1000/2 · (1 + 1)/2
        500.0
    """
    _check_number("beta", beta)
    _check_number("p", p)
    losses = []
    for s, t in feature_pairs(student_features, teacher_features, maps=True):
        s, t = match_spatial_size(s, t.detach())
        losses.append((_attention(s, p) - _attention(t, p)).pow(2).mean())
    return beta / 2 * torch.stack(losses).sum()


def nst(
    student_features: Tensor | Sequence[Tensor],
    teacher_features: Tensor | Sequence[Tensor],
    d: int = 2,
    c: float = 0.0,
) -> Tensor:
    """Neuron selectivity transfer: the squared MMD between the student's and the teacher's channel activation maps.

    Huang & Wang, 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (arXiv:1707.01219),
    methods §6.10. Each channel's map, flattened over the ``H·W`` positions and L2-normalised, is one sample
    ``f^i`` of a distribution; per image::

        MMD² = 1/C_T² Σ_i Σ_i' k(t_i, t_i') + 1/C_S² Σ_j Σ_j' k(s_j, s_j') − 2/(C_S·C_T) Σ_i Σ_j k(s_j, t_i)
        k(x, y) = (xᵀy + c)^d

    averaged over the batch and summed over layer pairs. Defaults from the paper and the authors' code
    (TuSimple/neuron-selectivity-transfer): the polynomial kernel with ``d = 2``, ``c = 0``. The authors' code
    drops the teacher-teacher term (constant for the student); it is kept here, so the loss is the biased MMD²
    estimate itself: ≥ 0, and 0 when the maps match. Channels may differ; maps of different heights or widths are
    matched by adaptive average pooling of the larger to the smaller (:func:`match_spatial_size`).

    Args:
        student_features: student maps ``[B, C_s, H, W]``, one tensor or one per layer pair.
        teacher_features: teacher maps ``[B, C_t, H', W']`` (detached).
        d: the kernel's degree, an integer ≥ 1.
        c: the kernel's constant ``c ≥ 0``.

    Example::

        >>> s = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]]); t = torch.tensor([[[[3.0, 0.0]], [[2.0, 0.0]]]])
        >>> float(nst(s, t))  # normalised: S = {(1,0), (0,1)}, T = {(1,0), (1,0)}: 2/4 + 4/4 − 2 · 2/4
        0.5
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"`d` (the polynomial kernel's degree) must be an integer ≥ 1, got {d!r}.")
    _check_number("c", c, zero=True)
    losses = []
    for s, t in feature_pairs(student_features, teacher_features, maps=True):
        s, t = match_spatial_size(s, t.detach())
        s, t = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)  # [B, C, H·W], unit rows
        mmd2 = _kernel_mean(t, t, d, c) + _kernel_mean(s, s, d, c) - 2 * _kernel_mean(s, t, d, c)
        losses.append(mmd2.mean())
    return torch.stack(losses).sum()


def vid(
    predicted_means: Tensor | Sequence[Tensor],
    teacher_features: Tensor | Sequence[Tensor],
    alpha: Tensor | Sequence[Tensor],
    eps: float = 1e-5,
) -> Tensor:
    """Variational information distillation: the Gaussian negative log-likelihood of the teacher's feature.

    Ahn, Hu, Damianou, Lawrence & Dai, 2019, "Variational Information Distillation for Knowledge Transfer" (CVPR),
    methods §6.11. The teacher's feature ``t`` is modelled as ``N(μ(s), σ²)`` with a per-channel variance::

        σ_c² = log(1 + exp(α_c)) + ε
        L_VID = Σ over pairs of mean over b, c, h, w of ½ · (log σ_c² + (t − μ(s))² / σ_c²)

    The constant ``½ log 2π`` is dropped. ``μ(s)`` is the output of the student's regressor and ``α`` its learned
    parameter (both owned by :class:`kd_probe.losses.VID`). ``ε = 1e-5`` as in the authors' code (as published
    in RepDistiller and mdistiller). For a fixed ``σ`` the loss grows with the squared residual; at the optimum
    ``σ_c²`` (the mean squared residual ``m_c`` of channel ``c``) it is ``mean_c ½ (log m_c + 1)``.

    Args:
        predicted_means: ``μ(s)``, ``[B, C, H, W]`` maps or ``[B, C]`` vectors, one tensor or one per layer pair.
        teacher_features: the teacher's features of the same shapes (detached).
        alpha: the variance parameters ``α``, one ``[C]`` tensor per pair.
        eps: the variance floor ``ε > 0``.

    Example::

        >>> mean = torch.zeros(1, 1, 1, 2); teacher = torch.full((1, 1, 1, 2), 2.0)
        >>> alpha = torch.tensor([math.log(math.e - 1)])  # softplus(α) = 1, σ² = 1 + ε
        >>> round(float(vid(mean, teacher, alpha)), 4)  # ½ (log 1 + 2² / 1)
        2.0
    """
    _check_number("eps", eps)
    pairs = feature_pairs(predicted_means, teacher_features, names=("predicted_means", "teacher_features"))
    alphas = feature_list("alpha", alpha)
    if len(alphas) != len(pairs):
        raise ValueError(f"`alpha` has {len(alphas)} tensors for {len(pairs)} layer pairs; expected one per pair.")
    losses = []
    for i, ((mean, t), a) in enumerate(zip(pairs, alphas, strict=True)):
        if mean.shape != t.shape or mean.dim() < 2 or a.shape != (t.shape[1],):
            raise ValueError(
                f"pair {i}: `predicted_means` {tuple(mean.shape)}, `teacher_features` {tuple(t.shape)} and `alpha` "
                f"{tuple(a.shape)} must be two features [B, C, ...] of the same shape and one α per channel [C]."
            )
        variance = (F.softplus(a) + eps).view(1, -1, *([1] * (t.dim() - 2)))
        losses.append((0.5 * (variance.log() + (t.detach() - mean).pow(2) / variance)).mean())
    return torch.stack(losses).sum()


def match_spatial_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Two maps ``[B, C, H, W]`` brought to the smaller height and width by adaptive average pooling of the larger
    (as RepDistiller does for AT, NST and VID); anything else is returned unchanged.

    Example::

        >>> s, t = match_spatial_size(torch.ones(1, 2, 4, 4), torch.ones(1, 3, 2, 2))
        >>> tuple(s.shape), tuple(t.shape)
        ((1, 2, 2, 2), (1, 3, 2, 2))
    """
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    size = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    resized = [x if tuple(x.shape[2:]) == size else F.adaptive_avg_pool2d(x, size) for x in (student, teacher)]
    return resized[0], resized[1]


def feature_list(name: str, features: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """``features`` as a list of float tensors (a single tensor is a one-element list)."""
    found = [features] if isinstance(features, Tensor) else list(features) if isinstance(features, Sequence) else []
    if not found or not all(isinstance(f, Tensor) and f.is_floating_point() for f in found):
        described = [f"{tuple(f.shape)} {f.dtype}" if isinstance(f, Tensor) else type(f).__name__ for f in found]
        given = described[0] if isinstance(features, Tensor) else f"[{', '.join(described)}]"
        raise ValueError(f"`{name}` must be a float tensor or a non-empty list of float tensors, got {given}.")
    return found


def feature_pairs(
    student_features: Tensor | Sequence[Tensor],
    teacher_features: Tensor | Sequence[Tensor],
    *,
    maps: bool = False,
    names: tuple[str, str] = ("student_features", "teacher_features"),
) -> list[tuple[Tensor, Tensor]]:
    """The layer pairs ``(student, teacher)``: as many of each, the same batch size (and ``[B, C, H, W]`` maps when
    ``maps``), else one sentence naming both."""
    students, teachers = feature_list(names[0], student_features), feature_list(names[1], teacher_features)
    if len(students) != len(teachers):
        raise ValueError(
            f"`{names[0]}` has {len(students)} tensors and `{names[1]}` has {len(teachers)}; expected one per layer "
            "pair in each."
        )
    for i, (s, t) in enumerate(zip(students, teachers, strict=True)):
        if (maps and (s.dim() != 4 or t.dim() != 4)) or s.dim() < 2 or t.dim() < 2 or len(s) != len(t):
            expected = "feature maps [B, C, H, W]" if maps else "features [B, ...]"
            raise ValueError(
                f"pair {i}: `{names[0]}` {tuple(s.shape)} and `{names[1]}` {tuple(t.shape)} must be {expected} of "
                "the same batch size."
            )
    return list(zip(students, teachers, strict=True))


def _attention(feature: Tensor, p: float) -> Tensor:
    """AT's attention map of each sample: ``Σ_c |A_c|^p`` flattened, then L2-normalised, ``[B, H·W]``."""
    return F.normalize(feature.abs().pow(p).sum(dim=1).flatten(1), dim=1)


def _kernel_mean(x: Tensor, y: Tensor, d: int, c: float) -> Tensor:
    """NST's ``mean over i, j of (x_iᵀ y_j + c)^d`` of each sample, ``[B]``."""
    return (x @ y.transpose(1, 2) + c).pow(d).mean(dim=(1, 2))


def _check_number(name: str, value: object, *, zero: bool = False) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (value >= 0 if zero else value > 0):  # type: ignore[operator]
        raise ValueError(f"`{name}` must be a finite number {'≥ 0' if zero else '> 0'}, got {value!r}.")
