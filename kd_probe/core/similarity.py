"""Representation similarity (methods §7), pure torch: CKA, minibatch CKA, Procrustes, class correlation.

Inputs are features ``[n, ...]`` of the same ``n`` items in the same order, flattened to ``[n, p]``; everything is
computed in float64 and returned as float64 (0-dim tensors unless said). Bad input (a different ``n``, too few
items, NaN or infinite values) is refused with one ``ValueError`` sentence naming the argument.

Zero denominators (methods §7.1): a centred feature column (or a centred Gram matrix) counts as zero when none
of its entries exceeds ``8·n·ε₆₄`` times the largest uncentred entry, the worst-case rounding of a mean of
``n`` terms; it is then set to exactly 0. A similarity whose denominator is then 0 is **0**, as for the distance
correlation of methods §3 (``dcor``'s rule): a constant representation shares nothing measurable.

Example::

    >>> x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    >>> rotation = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))[0]
    >>> round(float(linear_cka(x, 3 * x @ rotation)), 6), round(float(procrustes_distance(x, x @ rotation)), 6)
    (1.0, 0.0)
    >>> probe = MinibatchCKA()
    >>> for batch in x.split(16):
    ...     probe.update([batch], [batch, batch.relu()])
    >>> probe.compute().shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "MinibatchCKA",
    "class_correlation",
    "class_correlation_gap",
    "linear_cka",
    "procrustes_distance",
    "rbf_cka",
    "unbiased_hsic",
]

ROUNDING_FACTOR = 8.0  # c of the bound c·n·ε₆₄·max|entry| below which a centred entry is rounding (module docstring)


# ------------------------------------------------------------------------------------------------ input checks
def _entries(count: int) -> str:
    return f"{count} NaN or infinite {'entry' if count == 1 else 'entries'}"


def _finite(x: Tensor, argument: str, what: str) -> None:
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"`{argument}` holds {_entries(bad)}; finite {what} are expected.")


def _features(x: Tensor, argument: str, *, minimum: int, needs: str) -> Tensor:
    """``[n, ...]`` features as float64 ``[n, p]``, refused unless a floating tensor of ``n ≥ minimum`` finite rows
    (``needs`` completes the sentence of the refusal: "linear CKA needs n ≥ 2")."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{argument}` must be a tensor [n, ...] of features, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise ValueError(f"`{argument}` must hold floating-point features, got {x.dtype}.")
    count = x.shape[0] if x.dim() else 0
    if count < minimum:
        raise ValueError(f"`{argument}` has {count} items; {needs}.")
    _finite(x, argument, "features")
    return (x.flatten(1) if x.dim() > 1 else x[:, None]).double()


def _same_items(x: Tensor, y: Tensor, names: tuple[str, str]) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`{names[0]}` has {x.shape[0]} items and `{names[1]}` has {y.shape[0]}; features of the same items, "
            "one row each in the same order, are expected."
        )


# ------------------------------------------------------------------------------------------------ centring
def _centre_columns(x: Tensor) -> Tensor:
    """``x − mean over items`` of ``[..., n, p]``, a column that is zero up to rounding set to exactly 0 (module
    docstring)."""
    centred = x - x.mean(dim=-2, keepdim=True)
    bound = ROUNDING_FACTOR * x.shape[-2] * torch.finfo(torch.float64).eps * x.abs().amax(dim=-2, keepdim=True)
    return torch.where(centred.abs().amax(dim=-2, keepdim=True) <= bound, torch.zeros_like(centred), centred)


def _centre_gram(k: Tensor) -> Tensor:
    """``H K H`` (``H = I − 11ᵀ/n``) of a symmetric ``[n, n]`` Gram matrix, exactly 0 when zero up to rounding."""
    centred = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    bound = ROUNDING_FACTOR * k.shape[-1] * torch.finfo(torch.float64).eps * k.abs().max()
    return torch.zeros_like(centred) if bool(centred.abs().max() <= bound) else centred


# ---------------------------------------------------------------------------------------------------- formulas
def _alignment(cross: Tensor, self_x: Tensor, self_y: Tensor) -> Tensor:
    """CKA ``= HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` (methods §7.1, §7.2; Pearson's ρ is the same ratio of
    centred products, §7.4), element-wise; 0 where a denominator is 0 or negative (a constant representation)."""
    product = self_x * self_y
    positive = product > 0
    return torch.where(positive, cross / torch.where(positive, product, torch.ones_like(product)).sqrt(), 0.0)


def _linear_products(x: Tensor, y: Tensor, *, gram: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(⟨K̃,L̃⟩, ⟨K̃,K̃⟩, ⟨L̃,L̃⟩)`` for column-centred ``x`` ``[n, p]``, ``y`` ``[n, q]`` and linear kernels
    (methods §7.1): ``⟨XXᵀ, YYᵀ⟩ = ‖YᵀX‖²``, so the ``p × q`` feature-space form when ``p, q < n`` and the ``n × n``
    Gram form otherwise (``gram`` forces one; both give the same value)."""
    if gram is None:
        gram = not (x.shape[1] < x.shape[0] and y.shape[1] < y.shape[0])
    if gram:
        gram_x, gram_y = x @ x.T, y @ y.T
        return (gram_x * gram_y).sum(), gram_x.square().sum(), gram_y.square().sum()
    return (y.T @ x).square().sum(), (x.T @ x).square().sum(), (y.T @ y).square().sum()


def _rbf_gram(x: Tensor, bandwidth: float) -> Tensor:
    """``K_ij = exp(−‖x_i − x_j‖² / (2σ²))``, ``σ² = bandwidth² · median of the n² squared distances`` (methods §7.1);
    the σ → 0 limit ``1[x_i = x_j]`` when that median is 0."""
    squared = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").square().flatten()
    count = squared.numel()  # np.median's convention: the mean of the two middle values when the count is even
    median = (torch.kthvalue(squared, (count + 1) // 2).values + torch.kthvalue(squared, count // 2 + 1).values) / 2
    squared = squared.reshape(x.shape[0], x.shape[0])
    if bool(median <= 0):
        return (squared == 0).double()
    return torch.exp(-squared / (2 * bandwidth**2 * median))


def _hsic_matrix(grams_x: Tensor, grams_y: Tensor) -> Tensor:
    """Song et al.'s unbiased HSIC ``[a, b]`` of every pair of ``a`` Gram matrices ``grams_x`` ``[a, n, n]`` and
    ``b`` matrices ``grams_y`` ``[b, n, n]`` whose diagonals are zero (methods §7.2)::

        HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3))
    """
    n = grams_x.shape[-1]
    trace = torch.einsum("iab,jba->ij", grams_x, grams_y)
    totals = grams_x.sum(dim=(-2, -1))[:, None] * grams_y.sum(dim=(-2, -1))[None, :]
    through = torch.einsum("ia,ja->ij", grams_x.sum(dim=-2), grams_y.sum(dim=-1))  # 1ᵀK̃ · L̃1
    return (trace + totals / ((n - 1) * (n - 2)) - 2 * through / (n - 2)) / (n * (n - 3))


def _zero_diagonal(k: Tensor) -> Tensor:
    return k * (1 - torch.eye(k.shape[-1], dtype=k.dtype, device=k.device))


# ---------------------------------------------------------------------------------------------------- public
def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA (Kornblith et al. 2019), methods §7.1: ``‖YᶜᵀXᶜ‖²_F / (‖XᶜᵀXᶜ‖_F ‖YᶜᵀYᶜ‖_F)``.

    ``Xᶜ``, ``Yᶜ`` are the features ``[n, ...]`` (flattened per item) with their column means removed. In [0, 1];
    1 for ``y = s·x·Q`` (``Q`` orthogonal, ``s ≠ 0``), not invariant to other invertible linear maps. Computed in
    the ``p × q`` feature space when both widths are below ``n``, from the ``n × n`` Gram matrices otherwise (the
    same value). 0 when either side is constant over the items. Needs ``n ≥ 2``.

    Example::

        >>> x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
        >>> round(float(linear_cka(x, -2 * x)), 6)
        1.0
    """
    fx = _features(x, "x", minimum=2, needs="linear CKA needs n ≥ 2")
    fy = _features(y, "y", minimum=2, needs="linear CKA needs n ≥ 2")
    _same_items(fx, fy, ("x", "y"))
    return _alignment(*_linear_products(_centre_columns(fx), _centre_columns(fy)))


def rbf_cka(x: Tensor, y: Tensor, *, bandwidth: float = 0.5) -> Tensor:
    """CKA with RBF kernels (Kornblith et al. 2019), methods §7.1: ``⟨HKH, HLH⟩ / (‖HKH‖_F ‖HLH‖_F)``.

    ``K_ij = exp(−‖x_i − x_j‖²/(2σ²))`` with ``σ = bandwidth ×`` the median distance of ``x`` (per input; the
    median of all ``n²`` squared distances, diagonal included, as in the authors' code), likewise ``L`` for ``y``.
    In [0, 1]; 1 for identical inputs; 0 when a centred Gram matrix is zero up to rounding (all items identical).
    Needs ``n ≥ 2``.

    Example::

        >>> x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
        >>> round(float(rbf_cka(x, x)), 6), bool(0 <= rbf_cka(x, x.tanh(), bandwidth=1.0) <= 1)
        (1.0, True)
    """
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not 0 < bandwidth < float("inf"):
        raise ValueError(
            f"`bandwidth` must be a positive finite number (σ as a fraction of the median distance), got {bandwidth!r}."
        )
    fx = _features(x, "x", minimum=2, needs="RBF CKA needs n ≥ 2")
    fy = _features(y, "y", minimum=2, needs="RBF CKA needs n ≥ 2")
    _same_items(fx, fy, ("x", "y"))
    gram_x, gram_y = _centre_gram(_rbf_gram(fx, bandwidth)), _centre_gram(_rbf_gram(fy, bandwidth))
    return _alignment((gram_x * gram_y).sum(), gram_x.square().sum(), gram_y.square().sum())


def unbiased_hsic(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741 (K and L: Song et al.'s names)
    """Unbiased HSIC estimator (Song et al. 2012) of two Gram matrices ``[n, n]`` of the same ``n ≥ 4`` items,
    methods §7.2.

    The diagonals are zeroed (``K̃``, ``L̃``), then ``[tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] /
    (n(n−3))``. An unbiased estimate of HSIC: it can be slightly negative for independent items. Minibatch CKA
    (:class:`MinibatchCKA`) sums it over batches.

    Example::

        >>> x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
        >>> k = x @ x.T
        >>> bool(unbiased_hsic(k, k) > 0), bool(torch.isclose(unbiased_hsic(k, k + 5), unbiased_hsic(k, k)))
        (True, True)
    """
    for matrix, name in ((k, "k"), (l, "l")):
        if not isinstance(matrix, Tensor) or not matrix.is_floating_point():
            given = f"{matrix.dtype}" if isinstance(matrix, Tensor) else type(matrix).__name__
            raise ValueError(f"`{name}` must be a floating-point Gram matrix [n, n], got {given}.")
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"`{name}` must be a Gram matrix [n, n], got shape {tuple(matrix.shape)}.")
    if k.shape != l.shape:
        raise ValueError(
            f"`k` is {k.shape[0]} × {k.shape[0]} and `l` is {l.shape[0]} × {l.shape[0]}; Gram matrices of the "
            "same items are expected."
        )
    if k.shape[0] < 4:
        raise ValueError(f"`k` is {k.shape[0]} × {k.shape[0]}; the unbiased HSIC needs n ≥ 4 (it divides by n − 3).")
    _finite(k, "k", "kernel values")
    _finite(l, "l", "kernel values")
    return _hsic_matrix(_zero_diagonal(k.double())[None], _zero_diagonal(l.double())[None])[0, 0]


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen, Raghu & Kornblith 2021), methods §7.2: for every pair of ``xs[i]`` and
    ``ys[j]``, ``Σ_b HSIC₁(K_i, L_j) / sqrt(Σ_b HSIC₁(K_i, K_i) · Σ_b HSIC₁(L_j, L_j))`` over batches ``b``.

    Each :meth:`update` holds only the ``b × b`` linear Gram matrices of its batch (features centred within the
    batch first: ``HSIC₁`` does not change, and the rounding does not grow with the features' mean). The whole
    state is one float64 tensor, ``sums`` ``[len(xs) + 1, len(ys) + 1]``:

    - ``sums[i, j]`` (``i < len(xs)``, ``j < len(ys)``): ``Σ_b HSIC₁(K_i, L_j)``;
    - ``sums[i, -1]``: ``Σ_b HSIC₁(K_i, K_i)``; ``sums[-1, j]``: ``Σ_b HSIC₁(L_j, L_j)``;
    - ``sums[-1, -1]``: the number of batches, :attr:`count`.

    Everything is a sum, so summing ``sums`` over processes (``torch.distributed.all_reduce``) or with
    :meth:`merge` gives the value of one process fed all the batches; the order of the batches does not
    matter. The value does depend on how the items are cut into batches (``HSIC₁`` is estimated per batch).

    Example::

        >>> generator = torch.Generator().manual_seed(0)
        >>> probe = MinibatchCKA()
        >>> for _ in range(4):
        ...     x = torch.randn(16, 6, generator=generator)
        ...     probe.update([x, x.relu()], [2 * x])
        >>> probe.compute().round(decimals=6).tolist(), probe.count
        ([[1.0], [0.743642]], 4)
    """

    def __init__(self) -> None:
        self.sums = torch.zeros(1, 1, dtype=torch.float64)

    @property
    def count(self) -> int:
        """Number of batches accumulated (``sums[-1, -1]``)."""
        return int(self.sums[-1, -1])

    def reset(self) -> None:
        """Forget every batch."""
        self.sums = torch.zeros(1, 1, dtype=torch.float64, device=self.sums.device)

    def update(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        """Add one batch: ``xs`` and ``ys`` hold features ``[b, ...]`` of the same ``b ≥ 4`` items, one tensor per
        representation (layer), the same representations in the same order at every update."""
        for name, tensors in (("xs", xs), ("ys", ys)):
            if isinstance(tensors, Tensor) or not isinstance(tensors, Sequence):
                raise ValueError(
                    f"`{name}` must be a sequence of feature tensors [b, ...], got {type(tensors).__name__}; "
                    "wrap a single tensor in a list."
                )
            if not tensors:
                raise ValueError(f"`{name}` must hold at least one tensor of features [b, ...], got none.")
        shape = (len(xs) + 1, len(ys) + 1)
        if self.count and self.sums.shape != shape:
            raise ValueError(
                f"`xs` and `ys` hold {len(xs)} and {len(ys)} tensors but earlier batches held {self.sums.shape[0] - 1} "
                f"and {self.sums.shape[1] - 1}; the same representations are expected at every update."
            )
        grams = {}
        first: tuple[str, int] | None = None
        for name, tensors in (("xs", xs), ("ys", ys)):
            features = []
            for index, x in enumerate(tensors):
                argument = f"{name}[{index}]"
                flat = _features(
                    x,
                    argument,
                    minimum=4,
                    needs="MinibatchCKA needs batches of b ≥ 4 (the unbiased HSIC divides by b − 3)",
                )
                if first is None:
                    first = (argument, flat.shape[0])
                elif flat.shape[0] != first[1]:
                    raise ValueError(
                        f"`{argument}` has {flat.shape[0]} items and `{first[0]}` has {first[1]}; every tensor "
                        "of a batch holds the same items."
                    )
                centred = _centre_columns(flat)
                features.append(_zero_diagonal(centred @ centred.T))
            grams[name] = torch.stack(features)
        grams_x, grams_y = grams["xs"], grams["ys"]
        batch = torch.zeros(shape, dtype=torch.float64, device=grams_x.device)
        batch[:-1, :-1] = _hsic_matrix(grams_x, grams_y)
        batch[:-1, -1] = _hsic_matrix(grams_x, grams_x).diagonal()
        batch[-1, :-1] = _hsic_matrix(grams_y, grams_y).diagonal()
        batch[-1, -1] = 1
        self.sums = batch + (self.sums.to(batch.device) if self.count else 0)

    def merge(self, other: MinibatchCKA) -> MinibatchCKA:
        """Add the batches of ``other`` (another process's accumulator) to this one; returns ``self``."""
        if self.count and other.count and self.sums.shape != other.sums.shape:
            raise ValueError(
                f"`other` accumulates {other.sums.shape[0] - 1} × {other.sums.shape[1] - 1} pairs and this "
                f"MinibatchCKA {self.sums.shape[0] - 1} × {self.sums.shape[1] - 1}; only accumulators of the same "
                "representations can be merged."
            )
        if other.count:
            self.sums = other.sums.clone() if not self.count else self.sums + other.sums.to(self.sums.device)
        return self

    def compute(self) -> Tensor:
        """Minibatch CKA ``[len(xs), len(ys)]`` (float64) of the batches so far; 0 for a representation that was
        constant within every batch."""
        if not self.count:
            raise RuntimeError("MinibatchCKA.compute() needs at least one update(xs, ys) first.")
        return _alignment(self.sums[:-1, :-1], self.sums[:-1, -1:], self.sums[-1:, :-1])


def procrustes_distance(x: Tensor, y: Tensor) -> Tensor:
    """Orthogonal Procrustes distance (Ding, Denain & Steinhardt 2021), methods §7.3: ``2 − 2‖XᵀY‖_*``.

    ``X``, ``Y``: the features ``[n, ...]`` (flattened per item) with column means removed and scaled to unit
    Frobenius norm; ``‖·‖_*`` is the nuclear norm (sum of singular values), defined for any widths ``p``, ``q``.
    ``min_Q ‖X − YQ‖²_F`` over orthogonal ``Q``: in [0, 2], symmetric, 0 for ``y = s·x·Q`` (up to rounding;
    clamped at 0). A side wider than ``n`` is first reduced to ``n`` columns with the same Gram matrix (its
    thin SVD ``US``), which leaves the singular values of ``XᵀY`` unchanged. NaN when a side is constant over
    the items (no unit-norm scaling exists). Needs ``n ≥ 2``.

    Example::

        >>> x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
        >>> round(float(procrustes_distance(x, x.flip(1) + 1)), 6), bool(procrustes_distance(x, x.relu()) > 0)
        (0.0, True)
    """
    fx = _features(x, "x", minimum=2, needs="the Procrustes distance needs n ≥ 2")
    fy = _features(y, "y", minimum=2, needs="the Procrustes distance needs n ≥ 2")
    _same_items(fx, fy, ("x", "y"))
    sides = []
    for side in (_centre_columns(fx), _centre_columns(fy)):
        norm = torch.linalg.matrix_norm(side)
        if not bool(norm > 0):
            return torch.tensor(float("nan"), dtype=torch.float64, device=side.device)
        side = side / norm
        if side.shape[1] > side.shape[0]:
            u, s, _ = torch.linalg.svd(side, full_matrices=False)
            side = u * s
        sides.append(side)
    return (2 - 2 * torch.linalg.svdvals(sides[0].T @ sides[1]).sum()).clamp_min(0)


def _logits(logits: Tensor, argument: str) -> Tensor:
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        given = f"shape {tuple(logits.shape)} {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"`{argument}` must be a floating-point tensor [n, C] of class scores, got {given}.")
    return _features(logits, argument, minimum=2, needs="a class correlation needs n ≥ 2")


def class_correlation(logits: Tensor) -> Tensor:
    """Pearson correlation ``[C, C]`` (float64) of the class columns of ``logits`` ``[n, C]`` over the ``n ≥ 2``
    items, methods §7.4: ``ρ_cd = Σ_i z_ic z_id / sqrt(Σ_i z_ic² · Σ_i z_id²)``, ``z`` the centred logits.

    A class whose logit is constant over the items has correlation 0 with every class, itself included (a zero
    denominator, module docstring); every other diagonal entry is 1.

    Example::

        >>> logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [1.0, 3.0, 1.0], [3.0, 0.0, 0.0]])
        >>> class_correlation(logits).diagonal().tolist()
        [1.0, 1.0, 1.0]
    """
    z = _centre_columns(_logits(logits, "logits"))
    covariance = z.T @ z
    variance = covariance.diagonal()
    correlation = _alignment(covariance, variance[:, None], variance[None, :]).clamp(-1, 1)
    return correlation.diagonal_scatter((variance > 0).double())


def class_correlation_gap(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``class_correlation(teacher_logits) − class_correlation(student_logits)`` ``[C, C]`` (signed), methods §7.4:
    how far the student's class-to-class correlations are from the teacher's (the figure of the DKD and CRD
    papers). The probe logs its mean absolute value off the diagonal.

    Example::

        >>> logits = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
        >>> float(class_correlation_gap(logits, logits).abs().max())
        0.0
    """
    teacher, student = _logits(teacher_logits, "teacher_logits"), _logits(student_logits, "student_logits")
    if teacher.shape != student.shape:
        raise ValueError(
            f"`teacher_logits` has shape {tuple(teacher.shape)} and `student_logits` {tuple(student.shape)}; "
            "logits of the same items and classes are expected."
        )
    return class_correlation(teacher) - class_correlation(student)
