"""Distance correlation, its partial (residual) form and label embeddings: the [UC] toolkit (methods §3), pure torch.

Two entry points for each score: from features ``[n, ...]`` (flattened per sample; :func:`distance_correlation`,
:func:`relevance_given`, :func:`residual_matrix`) and from distance matrices ``[..., n, n]`` as
:func:`distance_matrix` returns them (:func:`correlation_of_distances`, :func:`relevance_given_of_distances`),
with any leading batch dimensions (one score per matrix): resampling images resamples the rows and columns of
their distances, so a bootstrap needs no second forward. Both go through the same centring and correlation
code. Everything is computed in float64 and returned in the inputs' floating dtype, differentiable (UniCAM
takes gradients through it). The bias-corrected forms (U-centring) need ``n ≥ 4`` samples; the V-statistic
form ``n ≥ 2``.

Degenerate and broken input (methods §3): a centred matrix counts as zero when ``⟨Ã,Ã⟩ ≤ τ_A²`` with
``τ_A = 8·n·ε₆₄·max_ij a_ij + 4·√ε`` (per matrix): the worst-case float64 rounding of its row and column sums
relative to the uncentred distances, plus the most that the ``ε`` inside ``a_ij`` moves a centred entry. The
residual ``P`` counts as zero when ``⟨P,P⟩ ≤ (τ_A + |β|·τ_B)²``, ``β = ⟨Ã,B̃⟩/⟨B̃,B̃⟩``. A correlation whose
denominator holds such a zero is 0, as in the ``dcor`` package; samples that all coincide (every
``a_ij ≤ √ε``, e.g. a constant sample or one image resampled n times) give exactly 0. The rounding term scales
with the features, so small but real correlations keep their value. NaN or infinite features (or distances)
give NaN, never a plausible number.

Example::

    >>> x = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    >>> round(float(distance_correlation(x, 3 * x)), 6)
    1.0
    >>> labels = torch.arange(16) % 4
    >>> bool(relevance_given(x, torch.randn(16, 5), labels).abs() <= 1)
    True
    >>> a, b = distance_matrix(x.double()), distance_matrix(torch.randn(16, 5, dtype=torch.float64))
    >>> resampled = torch.randint(0, 16, (100, 16))  # 100 bootstrap samples of the 16 images
    >>> rows, columns = resampled[:, :, None], resampled[:, None, :]
    >>> correlation_of_distances(a[rows, columns], b[rows, columns]).shape
    torch.Size([100])
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "correlation_of_distances",
    "distance_correlation",
    "distance_matrix",
    "double_centre",
    "label_embedding",
    "relevance_given",
    "relevance_given_of_distances",
    "residual",
    "residual_matrix",
    "u_centre",
    "u_inner",
    "v_inner",
]

EPS = 1e-18  # inside the square root of a_ij: keeps gradients finite for identical samples (authors' value)
ROUNDING_FACTOR = 8.0  # c of the bound c·n·ε₆₄·max a on the rounding of a centred entry (module docstring)


class _Centred(NamedTuple):
    """Centred distance matrices ``[..., n, n]`` with the bound ``[...]`` on the float64 rounding error of each
    of their entries."""

    matrix: Tensor
    noise: Tensor


# ------------------------------------------------------------------------------------------------ input checks
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


def _distances(a: Tensor, argument: str, *, minimum: int, eps: float) -> Tensor:
    """Distance matrices ``[..., n, n]`` as float64, with the checks every ``*_of_distances`` function needs, and
    every distance between two samples at least ``√ε`` (``a_ij = sqrt(‖x_i − x_j‖² + ε)``, methods §3): a
    resampled image is then ``√ε`` away from its copy, as in the distance matrix of the resampled features."""
    if not isinstance(a, Tensor):
        raise TypeError(f"`{argument}` must be a tensor [..., n, n] of distance matrices, got {type(a).__name__}.")
    if not a.is_floating_point():
        raise ValueError(
            f"`{argument}` must hold floating-point distances, got {a.dtype}; build them with distance_matrix(features)."
        )
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"`{argument}` must be distance matrices [..., n, n] (square in the last two dimensions), "
            f"got shape {tuple(a.shape)}."
        )
    if a.shape[-1] < minimum:
        raise ValueError(
            f"`{argument}` holds the distances of {a.shape[-1]} samples; this estimate needs n ≥ {minimum} "
            + ("(the bias-corrected form divides by n − 3)." if minimum == 4 else "samples.")
        )
    diagonal = torch.diagonal(a.detach(), dim1=-2, dim2=-1)
    off = diagonal[torch.isfinite(diagonal) & (diagonal != 0)]
    if off.numel():
        raise ValueError(
            f"`{argument}` must have a zero diagonal (a sample is 0 away from itself, as distance_matrix gives), "
            f"got {float(off.abs().max()):.3g} on it."
        )
    a = a.double()
    diagonal_mask = torch.eye(a.shape[-1], dtype=torch.bool, device=a.device)
    return torch.where(diagonal_mask, a, a.clamp_min(eps**0.5))


def _same_samples(matrices: dict[str, Tensor]) -> None:
    """Distance matrices of the same samples: one ``n``, broadcastable leading dimensions."""
    (first, a), *others = matrices.items()
    for name, b in others:
        if b.shape[-1] != a.shape[-1]:
            raise ValueError(
                f"`{first}` holds the distances of {a.shape[-1]} samples and `{name}` of {b.shape[-1]}; "
                "matrices of the same samples in the same order are expected."
            )
        try:
            torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"`{first}` has leading (batch) dimensions {tuple(a.shape[:-2])} and `{name}` "
                f"{tuple(b.shape[:-2])}; they must be equal or broadcastable."
            ) from None


# ---------------------------------------------------------------------------------------------------- formulas
def distance_matrix(x: Tensor, *, eps: float = EPS, normalize_rows: bool = False) -> Tensor:
    """``a_ij = sqrt(‖x_i − x_j‖² + ε)`` ``[n, n]`` for features ``[n, D]`` (methods §3), with ``a_ii = 0``.

    Distances are taken from the differences (not the Gram matrix), so identical samples are exactly 0 apart
    and memory stays ``n²``. ``ε`` only keeps the gradient finite at coincident samples; the diagonal is the
    distance of a sample to itself, 0 (the U-centring of methods §3 assumes it). ``normalize_rows=True`` scales
    each sample's features to unit L2 norm first (``F.normalize``; a zero vector stays 0), as the [UC]
    authors' scripts do before the V-statistic.
    """
    if normalize_rows:
        x = F.normalize(x, dim=-1)
    distances = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return torch.sqrt(distances * distances + eps) * (1 - torch.eye(x.shape[-2], dtype=x.dtype, device=x.device))


def u_centre(a: Tensor) -> Tensor:
    """U-centring (methods §3) of distance matrices ``[..., n, n]``: ``Ã_ij = a_ij − row_i/(n−2) − col_j/(n−2) +
    total/((n−1)(n−2))`` for i ≠ j, ``Ã_ii = 0``."""
    n = a.shape[-1]
    rows, columns = a.sum(dim=-1, keepdim=True), a.sum(dim=-2, keepdim=True)
    centred = a - rows / (n - 2) - columns / (n - 2) + a.sum(dim=(-2, -1), keepdim=True) / ((n - 1) * (n - 2))
    return centred * (1 - torch.eye(n, dtype=a.dtype, device=a.device))


def double_centre(a: Tensor) -> Tensor:
    """Double centring of the V-statistic (methods §3) of ``[..., n, n]``: ``A_ij = a_ij − mean_i − mean_j + mean``."""
    return a - a.mean(dim=-1, keepdim=True) - a.mean(dim=-2, keepdim=True) + a.mean(dim=(-2, -1), keepdim=True)


def u_inner(a: Tensor, b: Tensor) -> Tensor:
    """``⟨Ã, B̃⟩ = Σ_{i≠j} Ã_ij B̃_ij / (n(n−3))`` ``[...]`` of U-centred matrices ``[..., n, n]`` (methods §3; their
    diagonals are 0)."""
    n = a.shape[-1]
    return (a * b).sum(dim=(-2, -1)) / (n * (n - 3))


def v_inner(a: Tensor, b: Tensor) -> Tensor:
    """``⟨A, B⟩ = Σ_ij A_ij B_ij / n²`` ``[...]`` of double-centred matrices ``[..., n, n]`` (the V-statistic,
    methods §3)."""
    return (a * b).mean(dim=(-2, -1))


def _centred(a: Tensor, bias_corrected: bool, eps: float) -> _Centred:
    """Centred distance matrices (U-centred, else double-centred) with the bound ``8·n·ε₆₄·max_ij a_ij + 4·√ε``
    per matrix below which an entry is rounding (module docstring); exactly 0 where all samples coincide
    (every ``a_ij ≤ √ε``), NaN where a distance is NaN or infinite."""
    detached = a.detach()
    largest = detached.amax(dim=(-2, -1))
    noise = ROUNDING_FACTOR * a.shape[-1] * torch.finfo(torch.float64).eps * largest + 4 * eps**0.5
    coincide = largest <= eps**0.5
    if bool(coincide.all()):  # no graph: the score does not depend on the features there
        matrix = torch.zeros_like(a)
    else:
        matrix = u_centre(a) if bias_corrected else double_centre(a)
        if bool(coincide.any()):
            matrix = torch.where(coincide[..., None, None], torch.zeros_like(matrix), matrix)
    finite = torch.isfinite(detached).flatten(-2).all(dim=-1)
    if not bool(finite.all()):
        nan = torch.full_like(matrix, float("nan"))
        matrix = torch.where(finite[..., None, None], matrix, nan)
        noise = torch.where(finite, noise, torch.full_like(noise, float("nan")))
    return _Centred(matrix, noise)


def _correlation(a: _Centred, b: _Centred, bias_corrected: bool) -> Tensor:
    """``⟨A,B⟩ / sqrt(⟨A,A⟩⟨B,B⟩)`` ``[...]`` (methods §3); 0 when ``A`` or ``B`` is zero up to rounding
    (``⟨A,A⟩ ≤ noise²``, as ``dcor`` does for an exact 0), NaN when either is NaN."""
    product = u_inner if bias_corrected else v_inner
    aa, bb = product(a.matrix, a.matrix), product(b.matrix, b.matrix)
    zero = (aa <= a.noise.square()) | (bb <= b.noise.square())
    safe = torch.where(zero, torch.ones_like(aa), aa * bb)
    return torch.where(zero, torch.zeros_like(aa), product(a.matrix, b.matrix) / safe.sqrt())


def _residual(a: _Centred, b: _Centred) -> _Centred:
    """``P(Ã|B̃)`` (methods §3) with ``β = 0`` when ``B̃`` is zero up to rounding, and the rounding bound of ``P``'s
    entries, ``noise_Ã + |β|·noise_B̃``."""
    norm = u_inner(b.matrix, b.matrix)
    zero = norm <= b.noise.square()
    safe = torch.where(zero, torch.ones_like(norm), norm)
    coefficient = torch.where(zero, torch.zeros_like(norm), u_inner(a.matrix, b.matrix) / safe)
    return _Centred(a.matrix - coefficient[..., None, None] * b.matrix, a.noise + coefficient.detach().abs() * b.noise)


def _relevance(a: Tensor, b: Tensor, g: Tensor, eps: float) -> Tensor:
    """``R*(X|Y, G)`` ``[...]`` from the distance matrices of X, Y and G (methods §3)."""
    return _correlation(_residual(_centred(a, True, eps), _centred(b, True, eps)), _centred(g, True, eps), True)


# ------------------------------------------------------------------------------------------------ from features
def distance_correlation(
    x: Tensor, y: Tensor, *, bias_corrected: bool = True, eps: float = EPS, normalize_rows: bool = False
) -> Tensor:
    """Squared distance correlation of two samples of features ``[n, ...]`` (flattened per sample), methods §3.

    ``bias_corrected=True``: ``R*(X, Y) = ⟨Ã,B̃⟩ / sqrt(⟨Ã,Ã⟩⟨B̃,B̃⟩)`` with U-centred distance matrices (unbiased;
    may be slightly negative for independent samples; needs n ≥ 4). ``False``: the V-statistic (double
    centring, means), the paper-compatible FSS variant, in [0, 1] (n ≥ 2). ``normalize_rows=True`` scales each
    flattened sample of ``x`` and of ``y`` to unit L2 norm before the distances (``F.normalize``; a zero vector
    stays 0), as the [UC] authors' scripts do for their V-statistic FSS: with ``bias_corrected=False`` it
    reproduces their value. 0 when either centred distance matrix is zero up to rounding (a constant sample, or
    4 samples on a line whose middle gap is 0); NaN when a feature is NaN or infinite.

    Example::

        >>> x = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
        >>> round(float(distance_correlation(x, x, bias_corrected=False)), 6)
        1.0
        >>> round(float(distance_correlation(x, 5 * x, bias_corrected=False, normalize_rows=True)), 6)
        1.0
    """
    minimum = 4 if bias_corrected else 2
    fx, fy = _flat(x, "x", minimum=minimum), _flat(y, "y", minimum=minimum)
    _same_count(fx, fy, ("x", "y"))
    a = distance_matrix(fx, eps=eps, normalize_rows=normalize_rows)
    b = distance_matrix(fy, eps=eps, normalize_rows=normalize_rows)
    value = _correlation(_centred(a, bias_corrected, eps), _centred(b, bias_corrected, eps), bias_corrected)
    return value.to(torch.promote_types(x.dtype, y.dtype))


def residual(a: Tensor, b: Tensor) -> Tensor:
    """Residual of X given Y (methods §3): ``P(Ã|B̃) = Ã − (⟨Ã,B̃⟩/⟨B̃,B̃⟩) B̃`` for U-centred matrices ``[..., n, n]``.

    ``P`` is orthogonal to ``B̃`` under ``⟨·,·⟩``: what X's distances hold that Y's do not. ``B̃ = 0`` (a
    constant Y) leaves ``Ã`` unchanged. From centred matrices alone only an exact 0 counts as zero; the
    functions that start from features (:func:`residual_matrix`, :func:`relevance_given`) or distances
    (:func:`relevance_given_of_distances`) also treat a ``B̃`` that is zero up to rounding as zero.
    """
    exact = torch.zeros((), dtype=a.dtype, device=a.device)
    return _residual(_Centred(a, exact), _Centred(b, exact)).matrix


def label_embedding(labels: Tensor, embeddings: Tensor | None = None) -> Tensor:
    """Per-sample label vectors ``G`` ``[n, d]`` (methods §3): one-hot rows by default, else ``embeddings[labels]``
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
    fx, fy = _flat(x, "x", minimum=4), _flat(y, "y", minimum=4)
    _same_count(fx, fy, ("x", "y"))
    given = _residual(
        _centred(distance_matrix(fx, eps=eps), True, eps), _centred(distance_matrix(fy, eps=eps), True, eps)
    )
    zero = u_inner(given.matrix, given.matrix) <= given.noise.square()
    return torch.where(zero[..., None, None], torch.zeros_like(given.matrix), given.matrix)


def relevance_given(x: Tensor, y: Tensor, g: Tensor, *, eps: float = EPS) -> Tensor:
    """``R*(X|Y, G) = ⟨P(Ã|B̃), G̃⟩ / sqrt(⟨P,P⟩⟨G̃,G̃⟩)`` (methods §3): how much of what X holds beyond Y is about
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
    fx, fy = _flat(x, "x", minimum=4), _flat(y, "y", minimum=4)
    _same_count(fx, fy, ("x", "y"))
    if isinstance(g, Tensor) and not g.is_floating_point():
        g = label_embedding(g)
    fg = _flat(g, "g", minimum=4)
    _same_count(fx, fg, ("x", "g"))
    value = _relevance(distance_matrix(fx, eps=eps), distance_matrix(fy, eps=eps), distance_matrix(fg, eps=eps), eps)
    return value.to(torch.promote_types(x.dtype, y.dtype))


# ----------------------------------------------------------------------------------------------- from distances
def correlation_of_distances(a: Tensor, b: Tensor, *, bias_corrected: bool = True, eps: float = EPS) -> Tensor:
    """:func:`distance_correlation` from distance matrices ``[..., n, n]`` (as :func:`distance_matrix` gives: zero
    diagonal), one value per matrix: ``[...]`` for the broadcast leading dimensions.

    The same rules: 0 when a centred matrix is zero up to rounding (bound per matrix), exactly 0 when all its
    samples coincide, NaN for a NaN or infinite distance. Resampling images resamples their distances:
    ``a[idx][:, idx]`` gives the value of the features ``x[idx]`` (a distance between two samples below ``√ε``,
    such as the 0 between a repeated image and its copy, counts as ``√ε``, as :func:`distance_matrix` gives it).
    ``eps`` is the ``ε`` the distances were computed with (the floor, and a term of the rounding bound).

    Example::

        >>> x, y = torch.randn(12, 3, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
        >>> from_distances = correlation_of_distances(distance_matrix(x), distance_matrix(y))
        >>> bool(torch.isclose(from_distances, distance_correlation(x, y), rtol=0, atol=1e-12))
        True
    """
    minimum = 4 if bias_corrected else 2
    da, db = _distances(a, "a", minimum=minimum, eps=eps), _distances(b, "b", minimum=minimum, eps=eps)
    _same_samples({"a": da, "b": db})
    value = _correlation(_centred(da, bias_corrected, eps), _centred(db, bias_corrected, eps), bias_corrected)
    return value.to(torch.promote_types(a.dtype, b.dtype))


def relevance_given_of_distances(a: Tensor, b: Tensor, g: Tensor, *, eps: float = EPS) -> Tensor:
    """:func:`relevance_given` ``R*(X|Y, G)`` from the distance matrices ``[..., n, n]`` of X, Y and the label
    vectors G (``distance_matrix(label_embedding(labels))``), one value per matrix (``[...]``, leading
    dimensions broadcast); the rules of :func:`correlation_of_distances`."""
    da, db, dg = (_distances(m, name, minimum=4, eps=eps) for m, name in ((a, "a"), (b, "b"), (g, "g")))
    _same_samples({"a": da, "b": db, "g": dg})
    return _relevance(da, db, dg, eps).to(torch.promote_types(a.dtype, b.dtype))
