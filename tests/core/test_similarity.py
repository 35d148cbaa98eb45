import math
import re

import numpy as np
import pytest
import torch

from kd_probe.core.similarity import (
    MinibatchCKA,
    _centre_columns,
    _linear_products,
    class_correlation,
    class_correlation_gap,
    linear_cka,
    procrustes_distance,
    rbf_cka,
    unbiased_hsic,
)

# ---- an independent re-derivation in NumPy from the papers' trace formulas (explicit centring matrix H) ----


def _h(n):
    return np.eye(n) - np.ones((n, n)) / n


def _hsic_biased(k, ell):
    h = _h(len(k))
    return np.trace(k @ h @ ell @ h) / (len(k) - 1) ** 2  # Gretton et al. 2005; Kornblith et al. 2019 eq. (3)


def _cka(k, ell):
    return _hsic_biased(k, ell) / math.sqrt(_hsic_biased(k, k) * _hsic_biased(ell, ell))


def _np(x):
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def _reference_linear_cka(x, y):
    x, y = _np(x), _np(y)
    return _cka(x @ x.T, y @ y.T)


def _reference_rbf_gram(x, bandwidth):
    x = _np(x)
    squared = np.array([[float(((a - b) ** 2).sum()) for b in x] for a in x])
    # the authors' gram_rbf: np.median over all n² squared distances, the diagonal's zeros included
    return np.exp(-squared / (2 * bandwidth**2 * np.median(squared)))


def _reference_rbf_cka(x, y, bandwidth=0.5):
    return _cka(_reference_rbf_gram(x, bandwidth), _reference_rbf_gram(y, bandwidth))


def _reference_unbiased_hsic(k, ell):
    # Song, Smola, Gretton, Bedo, Borgwardt 2012, eq. (5), written out
    n = len(k)
    kt, lt = k - np.diag(np.diag(k)), ell - np.diag(np.diag(ell))
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ kt @ lt @ one
    ) / (n * (n - 3))


def _pair(n=40, p=6, q=4, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=generator, dtype=dtype)
    y = x.repeat(1, -(-q // p))[:, :q] * torch.linspace(0.5, 2, q, dtype=dtype) + 0.7 * torch.randn(
        n, q, generator=generator, dtype=dtype
    )
    return x, y


def _orthogonal(p, seed=3):
    return torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


# ------------------------------------------------------------------------------------------------------ CKA
@pytest.mark.parametrize("shape", [(40, 6, 4), (10, 30, 25), (12, 5, 40)], ids=["feature", "gram", "mixed"])
def test_linear_cka_matches_the_trace_formula(shape):
    x, y = _pair(*shape)
    assert float(linear_cka(x, y)) == pytest.approx(_reference_linear_cka(x, y), abs=1e-12)


def test_linear_cka_feature_space_and_gram_forms_agree():
    x, y = (_centre_columns(t) for t in _pair(50, 7, 3))
    feature, gram = _linear_products(x, y, gram=False), _linear_products(x, y, gram=True)
    for a, b in zip(feature, gram, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_linear_cka_of_a_representation_with_itself_is_one_and_a_float64_scalar():
    x, _ = _pair(dtype=torch.float32)
    value = linear_cka(x, x)
    assert value.dtype == torch.float64 and value.shape == ()
    assert float(value) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("p", [6, 60], ids=["p<n", "p>n"])
def test_linear_cka_is_invariant_to_rotation_and_isotropic_scaling_of_either_side(p):
    x, y = _pair(40, p, 4)
    before = float(linear_cka(x, y))
    q = _orthogonal(p)
    assert float(linear_cka(-3.5 * x @ q, y)) == pytest.approx(before, abs=1e-12)
    assert float(linear_cka(x, 0.01 * y @ _orthogonal(4, seed=5))) == pytest.approx(before, abs=1e-12)
    assert float(linear_cka(x + 100.0, y - 7.0)) == pytest.approx(before, abs=1e-10)  # column means removed


def test_linear_cka_is_not_invariant_to_an_arbitrary_invertible_linear_map():
    x, y = _pair(40, 6, 4)
    stretch = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 20.0], dtype=torch.float64))  # invertible
    before, after = float(linear_cka(x, y)), float(linear_cka(x @ stretch, y))
    # column 6 of x is not part of y: stretching it makes x look less like y
    assert before == pytest.approx(0.566, abs=1e-3) and after == pytest.approx(0.033, abs=1e-3)


def test_cka_of_a_constant_representation_is_zero():
    x, _ = _pair()
    constant = torch.full((40, 3), 0.1, dtype=torch.float64)
    assert float(linear_cka(x, constant)) == 0.0 and float(rbf_cka(constant, x)) == 0.0


def test_rbf_cka_matches_the_trace_formula_and_lies_in_the_unit_interval():
    for seed, bandwidth in ((0, 0.5), (1, 1.0), (2, 0.2)):
        x, y = _pair(24, 5, 3, seed=seed)
        value = float(rbf_cka(x, y, bandwidth=bandwidth))
        assert value == pytest.approx(_reference_rbf_cka(x, y, bandwidth), abs=1e-12)
        assert 0 <= value <= 1
    x, _ = _pair(24, 5, 3)
    assert float(rbf_cka(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(rbf_cka(x, 4 * x @ _orthogonal(5) + 1)) == pytest.approx(1.0, abs=1e-12)  # σ follows the scale


# ------------------------------------------------------------------------------------------ unbiased HSIC
def test_unbiased_hsic_matches_song_et_al_written_out():
    x, y = _pair(9, 5, 3)
    k, ell = (x @ x.T).numpy(), np.exp(-(torch.cdist(y, y).numpy() ** 2))
    assert float(unbiased_hsic(torch.from_numpy(k), torch.from_numpy(ell))) == pytest.approx(
        _reference_unbiased_hsic(k, ell), abs=1e-12
    )


def test_the_mean_over_random_batches_is_the_full_data_unbiased_value():
    """``HSIC₁`` is a U-statistic: its mean over all b-subsets of the n items is its value on the n items, so the
    mean over R random batches is within a few standard errors of it (4 SE: a 6e-5 chance of a false failure)."""
    x, y = _pair(64, 6, 4)
    k, ell = x @ x.T, y @ y.T
    full = float(unbiased_hsic(k, ell))
    generator = torch.Generator().manual_seed(1)
    values, biased = [], []
    for _ in range(2000):
        batch = torch.randperm(64, generator=generator)[:8]
        k_batch, ell_batch = k[batch][:, batch], ell[batch][:, batch]
        values.append(float(unbiased_hsic(k_batch, ell_batch)))
        biased.append(_hsic_biased(k_batch.numpy(), ell_batch.numpy()))
    standard_error = np.std(values) / math.sqrt(len(values))
    assert abs(np.mean(values) - full) < 4 * standard_error
    assert abs(np.mean(biased) - full) > 10 * standard_error  # the biased estimator, on the same batches, would not


def test_minibatch_cka_with_many_items_approaches_linear_cka():
    """n = 4096 items of p = 16 features in batches of 256: the minibatch value varies by about 0.001 between
    random partitions, and the biased full-data linear CKA is off by O(p/n) ≈ 0.004, so 0.01 holds both."""
    x, _ = _pair(4096, 16, 1)
    generator = torch.Generator().manual_seed(2)
    y = x @ torch.randn(16, 8, generator=generator, dtype=torch.float64)
    y = y + 2 * torch.randn(4096, 8, generator=generator, dtype=torch.float64)
    probe = MinibatchCKA()
    for batch in torch.randperm(4096, generator=generator).split(256):
        probe.update([x[batch]], [y[batch]])
    assert float(probe.compute()[0, 0]) == pytest.approx(float(linear_cka(x, y)), abs=0.01)


# ------------------------------------------------------------------------------------------- MinibatchCKA
def _batches(count=6, b=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        x = torch.randn(b, 5, generator=generator, dtype=torch.float64)
        out.append(([x, x.relu(), x[:, :2]], [x @ torch.ones(5, 3, dtype=torch.float64), x.tanh()]))
    return out


def _fed(batches):
    probe = MinibatchCKA()
    for xs, ys in batches:
        probe.update(xs, ys)
    return probe


def test_minibatch_cka_does_not_depend_on_the_order_of_the_batches():
    batches = _batches()
    forward, backward = _fed(batches).compute(), _fed(batches[::-1]).compute()
    assert forward.shape == (3, 2)
    torch.testing.assert_close(forward, backward, rtol=0, atol=1e-12)


def test_summed_accumulators_give_the_one_process_value_the_ddp_case():
    batches = _batches()
    one_process = _fed(batches)
    rank0, rank1 = _fed(batches[:2]), _fed(batches[2:])
    all_reduced = MinibatchCKA()
    all_reduced.sums = rank0.sums + rank1.sums  # what torch.distributed.all_reduce(sums) leaves on every rank
    assert all_reduced.count == one_process.count == 6
    torch.testing.assert_close(all_reduced.sums, one_process.sums, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rank0.merge(rank1).compute(), one_process.compute(), rtol=0, atol=1e-12)
    torch.testing.assert_close(MinibatchCKA().merge(one_process).compute(), one_process.compute(), rtol=0, atol=0)


def test_minibatch_cka_depends_on_how_items_are_cut_into_batches():
    """What is not true: ``HSIC₁`` is estimated per batch, so other batch boundaries give another value."""
    (xs1, ys1), (xs2, ys2) = _batches(2)
    joined = (
        [torch.cat(pair) for pair in zip(xs1, xs2, strict=True)],
        [torch.cat(pair) for pair in zip(ys1, ys2, strict=True)],
    )
    assert not torch.allclose(_fed([(xs1, ys1), (xs2, ys2)]).compute(), _fed([joined]).compute(), atol=1e-6)


def test_identical_networks_give_a_unit_diagonal_and_shifts_change_nothing():
    batches = [(xs, xs) for xs, _ in _batches()]
    value = _fed(batches).compute()
    torch.testing.assert_close(value.diagonal(), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((value - torch.eye(3, dtype=torch.float64)).abs().max() > 0.1)
    shifted = _fed([([x + 1e3 for x in xs], ys) for xs, ys in batches]).compute()
    torch.testing.assert_close(shifted, value, rtol=0, atol=1e-10)


def test_a_constant_representation_gives_zero_and_reset_forgets():
    probe = MinibatchCKA()
    for xs, _ in _batches(3):
        probe.update(xs[:1], [torch.full((16, 4), 0.3, dtype=torch.float64)])
    assert float(probe.compute()[0, 0]) == 0.0
    probe.reset()
    assert probe.count == 0 and probe.sums.shape == (1, 1)


# ----------------------------------------------------------------------------------------------- Procrustes
def _reference_procrustes(x, y):
    x, y = (_h(len(t)) @ _np(t) for t in (x, y))
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    return 2 - 2 * np.linalg.svd(x.T @ y, compute_uv=False).sum()


@pytest.mark.parametrize("shape", [(40, 6, 4), (10, 30, 25)], ids=["narrow", "wide"])
def test_procrustes_distance_matches_the_formula_and_is_symmetric(shape):
    x, y = _pair(*shape)
    value = float(procrustes_distance(x, y))
    assert value == pytest.approx(_reference_procrustes(x, y), abs=1e-12)
    assert float(procrustes_distance(y, x)) == pytest.approx(value, abs=1e-12)
    assert 0 < value <= 2


def test_procrustes_distance_is_the_least_squares_distance_over_rotations():
    x, y = (_centre_columns(t) for t in _pair(40, 5, 5))
    x, y = x / torch.linalg.matrix_norm(x), y / torch.linalg.matrix_norm(y)
    u, _, vh = torch.linalg.svd(y.T @ x)  # the orthogonal Procrustes solution, Schönemann 1966
    assert float(procrustes_distance(x, y)) == pytest.approx(float((x - y @ (u @ vh)).square().sum()), abs=1e-12)


@pytest.mark.parametrize("p", [6, 60], ids=["p<n", "p>n"])
def test_procrustes_distance_of_rotated_copies_is_zero(p):
    x, _ = _pair(40, p, 1)
    assert float(procrustes_distance(x, 2.5 * x @ _orthogonal(p) - 3)) <= 1e-10
    assert float(procrustes_distance(x, x.relu())) > 0.01


def test_procrustes_distance_of_a_constant_side_is_nan():
    x, _ = _pair()
    assert math.isnan(float(procrustes_distance(x, torch.ones(40, 2))))


# ------------------------------------------------------------------------------------------ class correlation
def test_class_correlation_is_pearsons_and_a_constant_class_correlates_with_nothing():
    logits, _ = _pair(30, 5, 1)
    torch.testing.assert_close(class_correlation(logits), torch.from_numpy(np.corrcoef(logits.numpy().T)))
    logits[:, 2] = 4.0
    value = class_correlation(logits)
    assert float(value[2].abs().max()) == 0.0 and float(value[:, 2].abs().max()) == 0.0
    assert value.diagonal().tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]


def test_class_correlation_gap_is_zero_for_identical_logits_and_signed_teacher_minus_student():
    teacher, _ = _pair(30, 4, 1)
    assert float(class_correlation_gap(teacher, teacher.float()).abs().max()) <= 1e-7
    student = teacher.clone()
    student[:, 1] = teacher[:, 0] + 0.1 * teacher[:, 1]  # the student confuses class 1 with class 0
    gap = class_correlation_gap(teacher, student)
    assert gap.shape == (4, 4) and float(gap[0, 1]) < -0.5 and gap[0, 1] == gap[1, 0]


# ----------------------------------------------------------------------------------------- against ckatorch
def test_against_ckatorch():
    ckatorch = pytest.importorskip("ckatorch", reason="the comparison with ckatorch needs it (the `test` extra)")
    x, y = _pair(41, 7, 4)  # an odd n: torch.median and np.median (the authors' rbf bandwidth) then agree
    assert float(linear_cka(x, y)) == pytest.approx(float(ckatorch.cka_base(x, y, kernel="linear")), abs=1e-10)
    expected = float(ckatorch.cka_base(x, y, kernel="rbf", threshold=0.5))
    assert float(rbf_cka(x, y, bandwidth=0.5)) == pytest.approx(expected, abs=1e-10)
    batches = _batches(5)
    xs = torch.stack([batch[0][1] for batch in batches])
    ys = torch.stack([batch[1][0] for batch in batches])
    ours = float(_fed([([a], [b]) for a, b in zip(xs, ys, strict=True)]).compute()[0, 0])
    assert ours == pytest.approx(float(ckatorch.cka_batch(xs, ys)), abs=1e-10)


# ------------------------------------------------------------------------------------------------ bad input
def _raises(error, sentence):
    return pytest.raises(error, match=f"^{re.escape(sentence)}$")


def test_bad_input_is_refused_in_one_sentence():
    x, y = _pair(10, 3, 2)
    with _raises(
        ValueError,
        "`x` has 10 items and `y` has 9; features of the same items, one row each in the same order, are expected.",
    ):
        linear_cka(x, y[:9])
    with _raises(ValueError, "`x` has 1 items; linear CKA needs n ≥ 2."):
        linear_cka(x[:1], y[:1])
    with _raises(ValueError, "`y` holds 1 NaN or infinite entry; finite features are expected."):
        rbf_cka(x, torch.where(y == y[0, 0], float("nan"), y))
    with _raises(ValueError, "`x` must hold floating-point features, got torch.int64."):
        procrustes_distance(torch.ones(10, 2, dtype=torch.long), y)
    with _raises(TypeError, "`x` must be a tensor [n, ...] of features, got list."):
        linear_cka([[1.0, 2.0]], y)
    with _raises(
        ValueError, "`bandwidth` must be a positive finite number (σ as a fraction of the median distance), got 0."
    ):
        rbf_cka(x, y, bandwidth=0)
    k = x @ x.T
    with _raises(ValueError, "`k` is 10 × 10 and `l` is 9 × 9; Gram matrices of the same items are expected."):
        unbiased_hsic(k, k[:9, :9])
    with _raises(ValueError, "`k` is 3 × 3; the unbiased HSIC needs n ≥ 4 (it divides by n − 3)."):
        unbiased_hsic(k[:3, :3], k[:3, :3])
    with _raises(ValueError, "`l` must be a Gram matrix [n, n], got shape (10, 9)."):
        unbiased_hsic(k, k[:, :9])
    with _raises(ValueError, "`k` holds 2 NaN or infinite entries; finite kernel values are expected."):
        unbiased_hsic(
            torch.tensor([[math.inf, 0, 0, 0], [0, math.nan, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), torch.eye(4)
        )
    with _raises(
        ValueError, "`logits` must be a floating-point tensor [n, C] of class scores, got shape (10,) torch.float64."
    ):
        class_correlation(x[:, 0])
    with _raises(
        ValueError,
        "`teacher_logits` has shape (10, 3) and `student_logits` (10, 2); logits of the same items and classes are expected.",
    ):
        class_correlation_gap(x, y)


def test_minibatch_cka_bad_input_is_refused_in_one_sentence():
    probe = MinibatchCKA()
    x = torch.randn(8, 3)
    with _raises(
        ValueError, "`xs` must be a sequence of feature tensors [b, ...], got Tensor; wrap a single tensor in a list."
    ):
        probe.update(x, [x])
    with _raises(ValueError, "`ys` must hold at least one tensor of features [b, ...], got none."):
        probe.update([x], [])
    with _raises(
        ValueError, "`xs[0]` has 3 items; MinibatchCKA needs batches of b ≥ 4 (the unbiased HSIC divides by b − 3)."
    ):
        probe.update([x[:3]], [x[:3]])
    with _raises(ValueError, "`ys[1]` has 6 items and `xs[0]` has 8; every tensor of a batch holds the same items."):
        probe.update([x], [x, x[:6]])
    with _raises(RuntimeError, "MinibatchCKA.compute() needs at least one update(xs, ys) first."):
        probe.compute()
    probe.update([x], [x])
    with _raises(
        ValueError,
        "`xs` and `ys` hold 2 and 1 tensors but earlier batches held 1 and 1; the same representations are expected at every update.",
    ):
        probe.update([x, x], [x])
    other = MinibatchCKA()
    other.update([x], [x, x])
    with _raises(
        ValueError,
        "`other` accumulates 1 × 2 pairs and this MinibatchCKA 1 × 1; only accumulators of the same representations can be merged.",
    ):
        probe.merge(other)
