"""Distance correlation, its partial (residual) form and label embeddings: the [UC] toolkit (spec §3), pure torch.

Everything is computed in float64 from features ``[n, ...]`` (flattened per sample) and returned as a 0-dim
tensor in the features' floating dtype, differentiable (UniCAM takes gradients through it). The
bias-corrected forms (U-centring) need ``n ≥ 4`` samples; the V-statistic form ``n ≥ 2``.

Degenerate and broken input (spec §3): a centred matrix counts as zero when ``⟨Ã,Ã⟩ ≤ τ_A²`` with
``τ_A = 8·n·ε₆₄·max_ij a_ij + 4·√ε``: the worst-case float64 rounding of its row and column sums relative to
the uncentred distances, plus the most that the ``ε`` inside ``a_ij`` moves a centred entry. The residual
``P`` counts as zero when ``⟨P,P⟩ ≤ (τ_A + |β|·τ_B)²``, ``β = ⟨Ã,B̃⟩/⟨B̃,B̃⟩``. A correlation whose
denominator holds such a zero is 0, as in the ``dcor`` package. The rounding term scales with the features,
so small but real correlations keep their value. NaN or infinite features give NaN, never a plausible number.

Example::

    >>> x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    >>> round(float(distance_correlation(x, 3 * x)), 6)
    1.0
    >>> labels = torch.arange(16) % 4
    >>> bool(relevance_given(x, torch.randn(16, 5), labels).abs() <= 1)
    True
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "distance_correlation",
    "distance_matrix",
    "double_centre",
    "label_embedding",
    "relevance_given",
    "residual",
    "residual_matrix",
    "u_centre",
    "u_inner",
    "v_inner",
]

EPS = 1e-18  # inside the square root of a_ij: keeps gradients finite for identical samples (authors' value)
ROUNDING_FACTOR = 8.0  # c of the bound c·n·ε₆₄·max a on the rounding of a centred entry (module docstring)


class _Centred(NamedTuple):
    """A centred distance matrix with the bound on the float64 rounding error of each of its entries."""

    matrix: Tensor
    noise: Tensor


def _flat(x: Tensor, argument: str, *, minimum: int) -> Tensor:
    """``[n, ...]`` features as float64 ``[n, D]``, with the checks every function here needs."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{argument}` must be a tensor [n, ...] of features, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise ValueError(
            f"`{argument}` must hold floating-point features, got {x.dtype}; turn class labels into "
            "vectors with label_embedding(labels) first."
        )
    if x.dim() < 1 or x.shape[0] < minimum:
        count = x.shape[0] if x.dim() else 0
        raise ValueError(
            f"`{argument}` has {count} samples; this estimate needs n ≥ {minimum} "
            + ("(the bias-corrected form divides by n − 3)." if minimum == 4 else "samples.")
        )
    return x.reshape(x.shape[0], -1).double()


def _same_count(x: Tensor, y: Tensor, names: tuple[str, str]) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`{names[0]}` has {x.shape[0]} samples and `{names[1]}` has {y.shape[0]}; one row per sample "
            "in the same order is expected."
        )


def distance_matrix(x: Tensor, *, eps: float = EPS) -> Tensor:
    """``a_ij = sqrt(‖x_i − x_j‖² + ε)`` ``[n, n]`` for features ``[n, D]`` (spec §3), with ``a_ii = 0``.

    Distances are taken from the differences (not the Gram matrix), so identical samples are exactly 0 apart
    and memory stays ``n²``. ``ε`` only keeps the gradient finite at coincident samples; the diagonal is the
    distance of a sample to itself, 0 (the U-centring of spec §3 assumes it).
    """
    distances = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.sqrt(distances * distances + eps) * (1 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device))


def u_centre(a: Tensor) -> Tensor:
    """U-centring (spec §3): ``Ã_ij = a_ij − row_i/(n−2) − col_j/(n−2) + total/((n−1)(n−2))`` for i ≠ j,
    ``Ã_ii = 0``."""
    n = a.shape[0]
    centred = (
        a - a.sum(dim=1, keepdim=True) / (n - 2) - a.sum(dim=0, keepdim=True) / (n - 2) + a.sum() / ((n - 1) * (n - 2))
    )
    return centred * (1 - torch.eye(n, dtype=a.dtype, device=a.device))


def double_centre(a: Tensor) -> Tensor:
    """Double centring of the V-statistic (spec §3): ``A_ij = a_ij − mean_i − mean_j + mean``."""
    return a - a.mean(dim=1, keepdim=True) - a.mean(dim=0, keepdim=True) + a.mean()


def u_inner(a: Tensor, b: Tensor) -> Tensor:
    """``⟨Ã, B̃⟩ = Σ_{i≠j} Ã_ij B̃_ij / (n(n−3))`` of U-centred matrices (spec §3; their diagonals are 0)."""
    n = a.shape[0]
    return (a * b).sum() / (n * (n - 3))


def v_inner(a: Tensor, b: Tensor) -> Tensor:
    """``⟨A, B⟩ = Σ_ij A_ij B_ij / n²`` of double-centred matrices (the V-statistic, spec §3)."""
    return (a * b).mean()


def _correlation(a: _Centred, b: _Centred, bias_corrected: bool) -> Tensor:
    """``⟨A,B⟩ / sqrt(⟨A,A⟩⟨B,B⟩)`` (spec §3); 0 when ``A`` or ``B`` is zero up to rounding (``⟨A,A⟩ ≤ noise²``,
    as ``dcor`` does for an exact 0), NaN when either is NaN."""
    product = u_inner if bias_corrected else v_inner
    aa, bb = product(a.matrix, a.matrix), product(b.matrix, b.matrix)
    zero = (aa <= a.noise.square()) | (bb <= b.noise.square())
    safe = torch.where(zero, torch.ones_like(aa), aa * bb)
    return torch.where(zero, torch.zeros_like(aa), product(a.matrix, b.matrix) / safe.sqrt())


def distance_correlation(x: Tensor, y: Tensor, *, bias_corrected: bool = True, eps: float = EPS) -> Tensor:
    """Squared distance correlation of two samples of features ``[n, ...]`` (flattened per sample), spec §3.

    ``bias_corrected=True``: ``R*(X, Y) = ⟨Ã,B̃⟩ / sqrt(⟨Ã,Ã⟩⟨B̃,B̃⟩)`` with U-centred distance matrices (unbiased;
    may be slightly negative for independent samples; needs n ≥ 4). ``False``: the V-statistic (double
    centring, means), the paper-compatible FSS variant, in [0, 1] (n ≥ 2). The authors' scripts L2-normalise
    every feature vector before the V-statistic; pass ``F.normalize(x.flatten(1))`` to reproduce that.
    0 when either centred distance matrix is zero up to rounding (a constant sample, or 4 samples on a line
    whose middle gap is 0); NaN when a feature is NaN or infinite.

    Example::

        >>> x = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
        >>> round(float(distance_correlation(x, x, bias_corrected=False)), 6)
        1.0
    """
    minimum = 4 if bias_corrected else 2
    fx, fy = _flat(x, "x", minimum=minimum), _flat(y, "y", minimum=minimum)
    _same_count(fx, fy, ("x", "y"))
    value = _correlation(_centred(fx, bias_corrected, eps), _centred(fy, bias_corrected, eps), bias_corrected)
    return value.to(torch.promote_types(x.dtype, y.dtype))


def _centred(x: Tensor, bias_corrected: bool, eps: float) -> _Centred:
    """The centred distance matrix of flat features with the bound ``8·n·ε₆₄·max_ij a_ij + 4·√ε`` below which an
    entry is rounding (module docstring); exactly 0 for a constant sample (all rows equal), NaN for non-finite
    features."""
    a = distance_matrix(x, eps=eps)
    n = x.shape[0]
    if not bool(torch.isfinite(x).all()):
        nan = torch.tensor(float("nan"), dtype=a.dtype, device=a.device)
        return _Centred(torch.full_like(a, float("nan")), nan)
    noise = ROUNDING_FACTOR * n * torch.finfo(torch.float64).eps * a.detach().max() + 4 * eps**0.5
    if not bool((x != x[:1]).any()):
        return _Centred(torch.zeros_like(a), noise)
    return _Centred(u_centre(a) if bias_corrected else double_centre(a), noise)


def residual(a: Tensor, b: Tensor) -> Tensor:
    """Residual of X given Y (spec §3): ``P(Ã|B̃) = Ã − (⟨Ã,B̃⟩/⟨B̃,B̃⟩) B̃`` for U-centred matrices.

    ``P`` is orthogonal to ``B̃`` under ``⟨·,·⟩``: what X's distances hold that Y's do not. ``B̃ = 0`` (a
    constant Y) leaves ``Ã`` unchanged. From centred matrices alone only an exact 0 counts as zero; the
    functions that start from features (:func:`residual_matrix`, :func:`relevance_given`) also treat a ``B̃``
    that is zero up to rounding as zero.
    """
    exact = torch.zeros((), dtype=a.dtype, device=a.device)
    return _residual(_Centred(a, exact), _Centred(b, exact)).matrix


def _residual(a: _Centred, b: _Centred) -> _Centred:
    """``P(Ã|B̃)`` (spec §3) with ``β = 0`` when ``B̃`` is zero up to rounding, and the rounding bound of ``P``'s
    entries, ``noise_Ã + |β|·noise_B̃``."""
    norm = u_inner(b.matrix, b.matrix)
    zero = norm <= b.noise.square()
    safe = torch.where(zero, torch.ones_like(norm), norm)
    coefficient = torch.where(zero, torch.zeros_like(norm), u_inner(a.matrix, b.matrix) / safe)
    return _Centred(a.matrix - coefficient * b.matrix, a.noise + coefficient.detach().abs() * b.noise)


def label_embedding(labels: Tensor, embeddings: Tensor | None = None) -> Tensor:
    """Per-sample label vectors ``G`` ``[n, d]`` (spec §3): one-hot rows by default, else ``embeddings[labels]``
    for a ``[num_classes, d]`` table (e.g. word embeddings of the class names)."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`labels` must be a 1-D integer tensor of classes, got {labels.dim()}-D {labels.dtype}.")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"`labels` must be ≥ 0, got {int(labels.min())}.")
    if embeddings is None:
        return F.one_hot(labels.long(), int(labels.max()) + 1 if labels.numel() else 1).double()
    if embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise ValueError(
            f"`label_embeddings` must be a float tensor [num_classes, d], got {embeddings.dim()}-D {embeddings.dtype}."
        )
    if labels.numel() and int(labels.max()) >= embeddings.shape[0]:
        raise ValueError(
            f"`labels` holds class {int(labels.max())} but `label_embeddings` has {embeddings.shape[0]} rows "
            "(one per class)."
        )
    return embeddings[labels.long().to(embeddings.device)]


def residual_matrix(x: Tensor, y: Tensor, *, eps: float = EPS) -> Tensor:
    """``P(Ã|B̃)`` ``[n, n]`` (float64) from features ``x``, ``y`` ``[n, ...]`` of the same ``n ≥ 4`` samples: the
    U-centred distances of X with what Y's distances explain removed (:func:`residual`). Exactly 0 when it is
    zero up to rounding (module docstring: X explained by Y, e.g. ``y = 2·x``); all NaN when a feature is NaN
    or infinite."""
    given = _residual_of(x, y, eps)
    zero = u_inner(given.matrix, given.matrix) <= given.noise.square()
    return torch.where(zero, torch.zeros_like(given.matrix), given.matrix)


def _residual_of(x: Tensor, y: Tensor, eps: float) -> _Centred:
    """:func:`residual_matrix` with the rounding bound of its entries."""
    fx, fy = _flat(x, "x", minimum=4), _flat(y, "y", minimum=4)
    _same_count(fx, fy, ("x", "y"))
    return _residual(_centred(fx, True, eps), _centred(fy, True, eps))


def relevance_given(x: Tensor, y: Tensor, g: Tensor, *, eps: float = EPS) -> Tensor:
    """``R*(X|Y, G) = ⟨P(Ã|B̃), G̃⟩ / sqrt(⟨P,P⟩⟨G̃,G̃⟩)`` (spec §3): how much of what X holds beyond Y is about
    the labels.

    0 when ``P`` or ``G̃`` is zero up to rounding (X explained by Y, e.g. ``y = 2·x``; labels whose distances
    carry no centred signal, e.g. one image alone in its class and all others in one class); NaN when a
    feature is NaN or infinite.

    Args:
        x, y: features ``[n, ...]`` of the same ``n ≥ 4`` samples (flattened per sample).
        g: integer labels ``[n]`` (one-hot embedding) or per-sample label vectors ``[n, ...]``
            (see :func:`label_embedding` for a ``[num_classes, d]`` table).
        eps: inside the square root of the distances.
    """
    given = _residual_of(x, y, eps)
    if isinstance(g, Tensor) and not g.is_floating_point():
        g = label_embedding(g)
    fg = _flat(g, "g", minimum=4)
    _same_count(given.matrix, fg, ("x", "g"))
    return _correlation(given, _centred(fg, True, eps), True).to(torch.promote_types(x.dtype, y.dtype))
