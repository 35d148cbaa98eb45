"""Relation-based distillation losses (pure torch, methods §6.12–§6.15): SP, PKT, RKD and CC.

Each compares how the samples of one batch relate to one another — a ``B × B`` (or ``B × B × B``) table built
inside each network separately — so the student's and the teacher's features may have different widths. A
feature of any shape ``[B, ...]`` (an embedding ``[B, D]``, a map ``[B, C, H, W]``, tokens ``[B, T, D]``) is
flattened to one vector per sample, as all four papers do. The teacher's tensor is detached: gradients reach the
student only. Relations are computed in at least float32 (a half-precision feature is promoted).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cc", "pkt", "rkd", "sp"]


def sp(student: Tensor, teacher: Tensor, gamma: float = 3000.0) -> Tensor:
    """Similarity-preserving loss (SP; methods §6.12).

    Tung & Mori, 2019, *Similarity-Preserving Knowledge Distillation* (ICCV), Eq. 1–3. With ``Q`` the batch's
    features flattened to ``[B, N]`` (the paper reshapes a map ``[B, C, H, W]`` to ``[B, C·H·W]``), the similarity
    matrix is ``G = Q·Qᵀ`` with each row L2-normalised, and::

        L_SP = γ / B² · ‖G_S − G_T‖²_F

    Summed over layer pairs by :class:`~kd_probe.losses.SP`. ``γ = 3000`` is the paper's weight (CIFAR-10, all
    experiments) and RepDistiller's ``--beta 3000`` for SP. The loss is unchanged when either network's features
    are scaled by one positive number or multiplied by an orthogonal matrix on the right; it is *not* invariant
    to scaling the samples by different factors (row normalisation removes a sample's own scale from its row,
    not from the other rows).

    Args:
        student: ``[B, ...]`` student features.
        teacher: ``[B, ...]`` teacher features (any width; detached).
        gamma: weight ``γ > 0`` of the term.

    Example::

        >>> s = torch.tensor([[1.0, 0.0], [1.0, 1.0]]); t = torch.eye(2)
        >>> round(float(sp(s, t, gamma=1.0)), 6)  # (4 − √2 − 4/√5) / 4
        0.199233
    """
    _check_number("gamma", gamma)
    s, t = _samples(student, teacher)
    difference = _row_normalised_gram(s) - _row_normalised_gram(t)
    return gamma * difference.pow(2).sum() / s.shape[0] ** 2


def pkt(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (PKT; methods §6.13).

    Passalis & Tefas, 2018, *Learning Deep Representations with Probabilistic Knowledge Transfer* (ECCV), with the
    cosine kernel of their Eq. 11, computed as in the authors' code (``passalis/probabilistic_kt``,
    ``cosine_similarity_loss``)::

        x̂_i = x_i / (‖x_i‖ + ε)                  K_ij = (x̂_i · x̂_j + 1) / 2  ∈ [0, 1]
        P_ij = K_ij / Σ_k K_ik                   (row i: the conditional distribution over j given i)
        L_PKT = 1/B² · Σ_i Σ_j P_T,ij · log((P_T,ij + ε) / (P_S,ij + ε))

    That is KL(P_T ‖ P_S) summed over each row and averaged over the ``B²`` entries. The paper writes the sums
    over ``j ≠ i`` and no average; the authors' code (followed here, as RepDistiller does, and its weights are
    tuned for it) keeps the diagonal ``K_ii = 1`` in the normalisation and the sum and takes the mean.
    ``ε = 1e-7`` is the authors' value, in the normalisation and the logarithm. The loss is unchanged by
    scaling each sample by its own positive factor (up to ``ε``) and by rotating either embedding.

    Args:
        student: ``[B, ...]`` student features.
        teacher: ``[B, ...]`` teacher features (any width; detached).
        eps: the small constant ``ε > 0``.

    Example::

        >>> s = torch.eye(2); t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> round(float(pkt(s, t)), 6)  # log(9/8) / 4
        0.029446
    """
    _check_number("eps", eps)
    s, t = _samples(student, teacher)
    p_student, p_teacher = _cosine_conditionals(s, eps), _cosine_conditionals(t, eps)
    return (p_teacher * torch.log((p_teacher + eps) / (p_student + eps))).mean()


def rkd(student: Tensor, teacher: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> Tensor:
    """Relational knowledge distillation (RKD; methods §6.14): distance-wise plus angle-wise terms.

    Park, Kim, Lu & Cho, 2019, *Relational Knowledge Distillation* (CVPR), Eq. 4–7, with the Huber loss
    ``l(x, y) = ½(x − y)²`` if ``|x − y| ≤ 1`` else ``|x − y| − ½`` (PyTorch's ``smooth_l1_loss``)::

        ψ_D(i, j) = ‖x_i − x_j‖ / μ,   μ = mean of ‖x_i − x_j‖ over the pairs i ≠ j
        L_D = 1/B² · Σ_{i≠j} l(ψ_D,S(i, j), ψ_D,T(i, j))
        ψ_A(i, j, k) = ⟨e_ij, e_ik⟩,   e_ij = (x_j − x_i) / ‖x_j − x_i‖   (cosine of the angle at vertex i)
        L_A = 1/B³ · Σ_{i,j,k} l(ψ_A,S(i, j, k), ψ_A,T(i, j, k))
        L_RKD = λ_D · L_D + λ_A · L_A

    The averages over ``B²`` and ``B³`` entries (the diagonal ones are 0 in both networks, and an angle with
    ``j = i`` or ``k = i`` counts as 0) are those of the authors' code (``lenscloth/RKD``); the paper writes sums.
    ``λ_D = 25``, ``λ_A = 50`` are the authors' CIFAR classification defaults (``run_distill_classification.py``;
    also RepDistiller's ``RKDLoss``); the authors' metric-learning runs use 1 and 2. (Their CIFAR script also
    L2-normalises the embeddings first; the paper and RepDistiller do not, nor does this function.) The loss is
    unchanged by translating, rotating or scaling either network's features. A batch of one sample has no pairs:
    the loss is 0; with two samples the angle term is 0.

    Args:
        student: ``[B, ...]`` student features.
        teacher: ``[B, ...]`` teacher features (any width; detached).
        distance_weight: ``λ_D ≥ 0``.
        angle_weight: ``λ_A ≥ 0`` (not both 0).

    Example::

        >>> s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 3**0.5 / 2]])
        >>> round(float(rkd(s, t, distance_weight=1.0, angle_weight=0.0)), 6)  # (34 − 24√2) / 6
        0.009812
        >>> round(float(rkd(s, t, distance_weight=0.0, angle_weight=1.0)), 6)  # (7 − 4√2) / 108
        0.012437
    """
    _check_number("distance_weight", distance_weight, zero=True)
    _check_number("angle_weight", angle_weight, zero=True)
    if distance_weight == 0 and angle_weight == 0:
        raise ValueError("`distance_weight` and `angle_weight` are both 0; at least one must be > 0.")
    s, t = _samples(student, teacher)
    if s.shape[0] < 2:
        return s.sum() * 0.0
    s_differences, t_differences = _differences(s), _differences(t)
    loss = s.new_zeros(())
    if distance_weight > 0:
        distances = F.smooth_l1_loss(_normalised_distances(s_differences), _normalised_distances(t_differences))
        loss = loss + distance_weight * distances
    if angle_weight > 0:
        angles = F.smooth_l1_loss(_angle_cosines(s_differences), _angle_cosines(t_differences))
        loss = loss + angle_weight * angles
    return loss


def cc(student: Tensor, teacher: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """Correlation congruence (CC; methods §6.15).

    Peng, Jin, Liu, Zhou, Wu, Liu, Li & Zhang, 2019, *Correlation Congruence for Knowledge Distillation* (ICCV),
    Sec. 3.3: the correlation between samples is a Gaussian RBF kernel ``exp(−γ‖x_i − x_j‖²)`` on L2-normalised
    features, approximated by its ``P``-order Taylor expansion (for unit vectors
    ``‖x_i − x_j‖² = 2 − 2 x_i·x_j``)::

        x̂_i = x_i / ‖x_i‖
        C_ij = Σ_{p=0..P} exp(−2γ) · (2γ)^p / p! · (x̂_i · x̂_j)^p
        L_CC = 1/B² · ‖C_S − C_T‖²_F

    ``γ = 0.4``, ``P = 2``: the paper's kernel as implemented by Knowledge-Distillation-Zoo (AberHu), the common
    reference re-implementation. Some re-implementations (e.g. a commented-out variant in RepDistiller) use the
    plain inner product ``x̂_i · x̂_j`` instead; with ``order=1`` this loss equals that one times
    ``(2γ·exp(−2γ))²``, because the constant term cancels. The kernel depends only on the cosines between
    samples, so the loss is unchanged by rotating either embedding or scaling each sample by a positive factor.

    Args:
        student: ``[B, ...]`` student features.
        teacher: ``[B, ...]`` teacher features (any width; detached).
        gamma: kernel width ``γ > 0``.
        order: order ``P ≥ 1`` of the Taylor expansion (an int).

    Example::

        >>> s = torch.eye(2); t = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
        >>> round(float(cc(s, t)), 5)  # 1.12² · exp(−1.6) / 2
        0.12663
    """
    _check_number("gamma", gamma)
    if not isinstance(order, int) or isinstance(order, bool) or order < 1:
        raise ValueError(f"`order` must be an integer ≥ 1 (the order P of the Taylor expansion), got {order!r}.")
    s, t = _samples(student, teacher)
    difference = _taylor_correlation(s, gamma, order) - _taylor_correlation(t, gamma, order)
    return difference.pow(2).mean()


def _row_normalised_gram(features: Tensor) -> Tensor:
    return F.normalize(features @ features.T, p=2, dim=1)


def _cosine_conditionals(features: Tensor, eps: float) -> Tensor:
    unit = features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)
    kernel = (unit @ unit.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


def _differences(features: Tensor) -> Tensor:
    """``[B, B, N]``: entry ``[i, j]`` is ``x_j − x_i`` (exact under translation, unlike a Gram matrix)."""
    return features.unsqueeze(0) - features.unsqueeze(1)


def _normalised_distances(differences: Tensor) -> Tensor:
    squared = differences.pow(2).sum(dim=-1)
    # clamped below so that the square root's gradient stays finite for coincident samples (authors: 1e-12)
    distances = squared.clamp_min(1e-12).sqrt()
    off_diagonal = ~torch.eye(distances.shape[0], dtype=torch.bool, device=distances.device)
    return torch.where(off_diagonal, distances / distances[off_diagonal].mean(), 0.0)


def _angle_cosines(differences: Tensor) -> Tensor:
    """``[B, B, B]``: entry ``[i, j, k]`` is the cosine of the angle at ``x_i`` between ``x_j`` and ``x_k``."""
    unit = F.normalize(differences, p=2, dim=-1)  # a zero difference (j = i) stays 0
    return unit @ unit.transpose(1, 2)


def _taylor_correlation(features: Tensor, gamma: float, order: int) -> Tensor:
    cosines = F.normalize(features, p=2, dim=1) @ F.normalize(features, p=2, dim=1).T
    correlation = torch.zeros_like(cosines)
    for p in range(order + 1):
        correlation = correlation + (2 * gamma) ** p / math.factorial(p) * cosines.pow(p)
    return math.exp(-2 * gamma) * correlation


def _samples(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both features as ``[B, N]`` matrices in at least float32, the teacher's detached."""
    for name, value in (("student", student), ("teacher", teacher)):
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() < 2:
            described = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"`{name}` must be a float tensor of one feature per sample ([B, D], [B, C, H, W], ...), "
                f"got {described}."
            )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"`student` {tuple(student.shape)} and `teacher` {tuple(teacher.shape)} must hold the same number of "
            "samples (the same batch through both networks); their widths may differ."
        )
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    return student.flatten(1).to(dtype), teacher.detach().flatten(1).to(dtype)


def _check_number(name: str, value: object, *, zero: bool = False) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (value >= 0 if zero else value > 0):  # type: ignore[operator]
        bound = "≥ 0" if zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {bound}, got {value!r}.")
