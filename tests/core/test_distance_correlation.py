import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_probe.core.distance_correlation import (
    correlation_of_distances,
    distance_correlation,
    distance_matrix,
    label_embedding,
    relevance_given,
    relevance_given_of_distances,
    residual,
    residual_matrix,
    u_centre,
    u_inner,
)

# ---- an independent, straightforward implementation of spec §3 (plain Python loops over numpy) ----


def _distances(x):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n = len(x)
    # spec §3: a_ij = sqrt(‖x_i − x_j‖² + ε) between two samples; a sample is 0 away from itself
    return np.array(
        [[math.sqrt(float(((x[i] - x[j]) ** 2).sum()) + 1e-18) if i != j else 0.0 for j in range(n)] for i in range(n)]
    )


def _u_centred(a):
    n = len(a)
    out = np.zeros_like(a)
    total = a.sum()
    for i in range(n):
        for j in range(n):
            if i != j:
                out[i, j] = a[i, j] - a[i].sum() / (n - 2) - a[:, j].sum() / (n - 2) + total / ((n - 1) * (n - 2))
    return out


def _double_centred(a):
    n = len(a)
    out = np.zeros_like(a)
    for i in range(n):
        for j in range(n):
            out[i, j] = a[i, j] - a[i].mean() - a[:, j].mean() + a.mean()
    return out


def _u_bracket(a, b):
    n = len(a)
    return sum(a[i, j] * b[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 3))


def _v_bracket(a, b):
    n = len(a)
    return sum(a[i, j] * b[i, j] for i in range(n) for j in range(n)) / n**2


def _reference_r_star(x, y):
    a, b = _u_centred(_distances(x)), _u_centred(_distances(y))
    return _u_bracket(a, b) / math.sqrt(_u_bracket(a, a) * _u_bracket(b, b))


def _reference_v(x, y):
    a, b = _double_centred(_distances(x)), _double_centred(_distances(y))
    return _v_bracket(a, b) / math.sqrt(_v_bracket(a, a) * _v_bracket(b, b))


def _reference_relevance_given(x, y, g):
    a, b, c = (_u_centred(_distances(t)) for t in (x, y, g))
    p = a - _u_bracket(a, b) / _u_bracket(b, b) * b
    return _u_bracket(p, c) / math.sqrt(_u_bracket(p, p) * _u_bracket(c, c))


def _sample(n=12, d=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(d, 3, generator=generator, dtype=torch.float64)) + 0.5 * torch.randn(
        n, 3, generator=generator, dtype=torch.float64
    )
    return x, y, generator


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_equal_the_straightforward_implementation(seed):
    x, y, generator = _sample(seed=seed)
    labels = torch.randint(0, 3, (12,), generator=generator)
    onehot = np.eye(3)[labels.numpy()]
    assert float(distance_correlation(x, y)) == pytest.approx(_reference_r_star(x.numpy(), y.numpy()), abs=1e-12)
    assert float(distance_correlation(x, y, bias_corrected=False)) == pytest.approx(
        _reference_v(x.numpy(), y.numpy()), abs=1e-12
    )
    assert float(relevance_given(x, y, labels)) == pytest.approx(
        _reference_relevance_given(x.numpy(), y.numpy(), onehot), abs=1e-12
    )


def test_features_are_flattened_per_sample():
    x, y, _ = _sample()
    images = x.reshape(12, 5, 1, 1).expand(12, 5, 2, 3)
    reference = _reference_r_star(images.numpy(), y.numpy())
    assert float(distance_correlation(images, y)) == pytest.approx(reference, abs=1e-12)


def test_r_star_of_a_sample_with_itself_is_one_and_invariances():
    x, y, generator = _sample(n=20, d=6)
    assert float(distance_correlation(x, x)) == pytest.approx(1.0, abs=1e-12)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    base = float(distance_correlation(x, y))
    assert float(distance_correlation(7.5 * x, y)) == pytest.approx(base, abs=1e-10)
    assert float(distance_correlation(x @ rotation, y)) == pytest.approx(base, abs=1e-10)
    assert float(distance_correlation(x + 3.0, y)) == pytest.approx(base, abs=1e-10)
    labels = torch.arange(20) % 4
    given = float(relevance_given(x, y, labels))
    assert float(relevance_given(0.2 * x @ rotation, 5 * y, labels)) == pytest.approx(given, abs=1e-10)


def test_float32_inputs_give_float32_results_close_to_float64():
    x, y, _ = _sample()
    value = distance_correlation(x.float(), y.float())
    assert value.dtype == torch.float32 and value.dim() == 0
    assert float(value) == pytest.approx(float(distance_correlation(x, y)), abs=1e-6)


def test_residual_is_orthogonal_to_the_conditioning_matrix():
    x, y, _ = _sample()
    a, b = u_centre(distance_matrix(x)), u_centre(distance_matrix(y))
    p = residual(a, b)
    assert abs(float(u_inner(p, b))) < 1e-12 * float(u_inner(a, a))
    assert torch.equal(torch.diagonal(p), torch.zeros(12, dtype=torch.float64))
    assert torch.allclose(residual(a, torch.zeros_like(b)), a)  # constant Y: nothing to remove


def test_relevance_given_itself_and_identical_features():
    x, _, _ = _sample()
    labels = torch.arange(12) % 3
    assert float(relevance_given(x, x, labels)) == 0.0  # nothing left once X is explained by itself
    assert math.isfinite(float(relevance_given(x, torch.zeros(12, 2, dtype=torch.float64), labels)))


def test_constant_features_give_zero_and_finite_gradients():
    x, _, _ = _sample()
    assert float(distance_correlation(x, torch.ones(12, 3, dtype=torch.float64))) == 0.0
    repeated = torch.cat([x[:6], x[:6]]).requires_grad_(True)  # identical samples: a_ij = sqrt(ε)
    (gradient,) = torch.autograd.grad(distance_correlation(repeated, x), repeated)
    assert torch.isfinite(gradient).all()


def test_label_embeddings_one_hot_and_table():
    labels = torch.tensor([0, 2, 1, 2])
    assert torch.equal(label_embedding(labels), torch.eye(3, dtype=torch.float64)[labels])
    table = torch.randn(3, 5)
    assert torch.equal(label_embedding(labels, table), table[labels])
    x, y, _ = _sample(n=8)
    eight = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    assert float(relevance_given(x, y, eight)) == pytest.approx(
        float(relevance_given(x, y, label_embedding(eight, torch.eye(3, dtype=torch.float64)))), abs=1e-12
    )


def test_clear_errors():
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"`x` has 3 samples; this estimate needs n ≥ 4 \(the bias-corrected"):
        distance_correlation(x, x)
    assert float(distance_correlation(x, x, bias_corrected=False)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"`x` has 1 samples; this estimate needs n ≥ 2"):
        distance_correlation(x[:1], x[:1], bias_corrected=False)
    with pytest.raises(ValueError, match=r"`x` has 3 samples"):
        relevance_given(x, x, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"`x` has 5 samples and `y` has 6"):
        distance_correlation(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match=r"`x` has 5 samples and `g` has 4"):
        relevance_given(torch.randn(5, 2), torch.randn(5, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"`y` must hold floating-point features, got torch.int64; .*label_embedding"):
        distance_correlation(torch.randn(5, 2), torch.arange(5))
    with pytest.raises(ValueError, match=r"`labels` holds class 3 but `label_embeddings` has 3 rows"):
        label_embedding(torch.tensor([0, 3]), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"`labels` must be a 1-D integer tensor of classes, got 1-D torch.float32"):
        label_embedding(torch.tensor([0.0, 1.0]))


# ---- degenerate and broken input (spec §3): zero up to rounding gives 0, non-finite gives NaN ----


def _explained_by_y():
    """Y is an affine copy of X (rotated and scaled): the residual P(Ã|B̃) is rounding noise."""
    x, _, generator = _sample(n=12, d=5, seed=3)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator, dtype=torch.float64))
    return x, 1.7 * x @ rotation + 0.3, torch.arange(12) % 3


def _alone_in_its_class():
    """All images in one class but one: the one-hot distances are additive (h_i + h_j), so G̃ is rounding noise."""
    x, y, _ = _sample(n=9, seed=4)
    labels = torch.zeros(9, dtype=torch.long)
    labels[5] = 1
    return x, y, labels


def _four_on_a_line():
    """4 samples of 1-D features whose middle gap is 0: the distances are additive, Ã is rounding noise."""
    line = torch.tensor([[0.6], [0.3], [0.0], [0.3]], dtype=torch.float64)
    return line, torch.tensor([[0.0, 1.0], [2.0, 0.5], [1.0, 1.0], [3.0, 0.0]], dtype=torch.float64)


def test_a_centred_matrix_that_is_zero_up_to_rounding_gives_zero():
    # before: rounding noise normalised into 0.049, −0.054 / −0.026 and −1.0 / −0.98; now exactly 0, as in dcor
    x, y, labels = _explained_by_y()
    assert float(relevance_given(x, y, labels)) == 0.0
    assert torch.equal(residual_matrix(x, y), torch.zeros(12, 12, dtype=torch.float64))
    x, y, labels = _alone_in_its_class()
    assert float(relevance_given(x, y, labels)) == 0.0
    assert float(distance_correlation(x, label_embedding(labels))) == 0.0
    line, y = _four_on_a_line()
    assert float(distance_correlation(line, y)) == 0.0
    assert float(distance_correlation(y, 1e6 * line)) == 0.0


def test_small_but_real_correlations_are_kept_and_scale_invariant():
    x, y, generator = _sample(seed=5)
    labels = torch.arange(12) % 3
    onehot = np.eye(3)[labels.numpy()]
    base, given = float(distance_correlation(x, y)), float(relevance_given(x, y, labels))
    for scale in (1e-6, 1e6):  # the tolerance scales with the distances, so tiny or huge features keep their value
        assert float(distance_correlation(scale * x, y)) == pytest.approx(base, abs=1e-7)
        assert float(relevance_given(scale * x, scale * y, labels)) == pytest.approx(given, abs=1e-7)
    # X barely beyond Y: P is 1e-4 of Ã, small but far above rounding
    nearly = x + 1e-4 * torch.randn(12, 5, generator=generator, dtype=torch.float64)
    expected = _reference_relevance_given(nearly.numpy(), x.numpy(), onehot)
    assert float(relevance_given(nearly, x, labels)) == pytest.approx(expected, abs=1e-9)
    assert float(relevance_given(1e6 * nearly, 1e6 * x, labels)) == pytest.approx(expected, abs=1e-9)
    assert expected != 0.0
    # 4 samples on a line whose middle gap is 1e-4 of the others: Ã is small but real
    line = torch.tensor([[0.0], [1.0], [1.0001], [2.0001]], dtype=torch.float64)
    other = torch.tensor([[0.0, 1.0], [2.0, 0.5], [1.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    expected = _reference_r_star(line.numpy(), other.numpy())
    for scale in (1.0, 0.1, 1e6):  # (the ε = 1e-18 inside a_ij moves a gap of 1e-5 by 5e-14)
        assert float(distance_correlation(scale * line, other)) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_features_give_nan(bad):
    x, y, _ = _sample()
    labels = torch.arange(12) % 3
    broken = x.clone()
    broken[2, 1] = bad
    for value in (
        distance_correlation(broken, y),  # before: 0.0 for NaN
        distance_correlation(y, broken),
        distance_correlation(broken, y, bias_corrected=False),
        relevance_given(broken, y, labels),
        relevance_given(y, broken, labels),
        relevance_given(x, y, broken),
    ):
        assert math.isnan(float(value))
    assert torch.isnan(residual_matrix(broken, y)).all() and torch.isnan(residual_matrix(y, broken)).all()


# ---- normalize_rows: the authors' V-statistic FSS ----


def test_normalize_rows_normalises_each_flattened_sample_first():
    x, y, _ = _sample(seed=6)
    images = x.reshape(12, 5, 1, 1).expand(12, 5, 2, 3)  # flattened per sample, then normalised
    unit_x, unit_y = F.normalize(images.flatten(1), dim=1), F.normalize(y, dim=1)
    value = float(distance_correlation(images, y, bias_corrected=False, normalize_rows=True))
    assert value == pytest.approx(_reference_v(unit_x.numpy(), unit_y.numpy()), abs=1e-12)
    assert value != pytest.approx(float(distance_correlation(images, y, bias_corrected=False)), abs=1e-3)
    assert float(distance_correlation(x, 5 * x, normalize_rows=True)) == pytest.approx(1.0, abs=1e-12)
    # a rescaled sample is the same sample once normalised: only its direction counts
    scales = torch.linspace(0.5, 3.0, 12, dtype=torch.float64)[:, None]
    assert float(distance_correlation(scales * x, y, normalize_rows=True)) == pytest.approx(
        float(distance_correlation(x, y, normalize_rows=True)), abs=1e-12
    )


# ---- from distance matrices: batched, resampled (bootstrap) ----


def _distance_triples(count=5, n=12, seed=7):
    """Features of X, Y and labels G of ``count`` independent samples."""
    generator = torch.Generator().manual_seed(seed)
    triples = []
    for _ in range(count):
        x = torch.randn(n, 4, 2, generator=generator, dtype=torch.float64)
        y = torch.tanh(x.flatten(1) @ torch.randn(8, 3, generator=generator, dtype=torch.float64))
        y = y + 0.5 * torch.randn(n, 3, generator=generator, dtype=torch.float64)
        triples.append((x, y, label_embedding(torch.randint(0, 3, (n,), generator=generator))))
    return triples


def test_distance_versions_equal_the_feature_versions():
    for x, y, g in _distance_triples():
        a, b, c = (distance_matrix(t.flatten(1)) for t in (x, y, g))
        for bias_corrected in (True, False):
            assert float(correlation_of_distances(a, b, bias_corrected=bias_corrected)) == pytest.approx(
                float(distance_correlation(x, y, bias_corrected=bias_corrected)), abs=1e-12
            )
        assert float(relevance_given_of_distances(a, b, c)) == pytest.approx(float(relevance_given(x, y, g)), abs=1e-12)
        assert float(relevance_given_of_distances(b, a, c)) == pytest.approx(float(relevance_given(y, x, g)), abs=1e-12)
        rows = distance_matrix(x.flatten(1), normalize_rows=True), distance_matrix(y, normalize_rows=True)
        assert float(correlation_of_distances(*rows, bias_corrected=False)) == pytest.approx(
            float(distance_correlation(x, y, bias_corrected=False, normalize_rows=True)), abs=1e-12
        )


def test_batched_equals_looped():
    triples = _distance_triples(count=6)
    a, b, c = (torch.stack([distance_matrix(t[k].flatten(1)) for t in triples]) for k in range(3))
    a, b, c = a.view(2, 3, 12, 12), b.view(2, 3, 12, 12), c.view(2, 3, 12, 12)  # two leading dimensions
    batched = {
        "r": correlation_of_distances(a, b),
        "v": correlation_of_distances(a, b, bias_corrected=False),
        "given": relevance_given_of_distances(a, b, c),
    }
    assert all(value.shape == (2, 3) and value.dtype == torch.float64 for value in batched.values())
    for i in range(2):
        for j in range(3):
            looped = {
                "r": correlation_of_distances(a[i, j], b[i, j]),
                "v": correlation_of_distances(a[i, j], b[i, j], bias_corrected=False),
                "given": relevance_given_of_distances(a[i, j], b[i, j], c[i, j]),
            }
            for key, value in looped.items():
                assert value.dim() == 0
                assert float(batched[key][i, j]) == pytest.approx(float(value), abs=1e-12), key
    broadcast = correlation_of_distances(a, c[0, 0])  # one label matrix against a batch
    assert float(broadcast[1, 2]) == pytest.approx(float(correlation_of_distances(a[1, 2], c[0, 0])), abs=1e-12)


def test_resampled_distances_equal_the_resampled_features():
    generator = torch.Generator().manual_seed(8)
    for x, y, g in _distance_triples(count=4, n=10):
        a, b, c = (distance_matrix(t.flatten(1)) for t in (x, y, g))
        indices = torch.randint(0, 10, (20, 10), generator=generator)  # 20 bootstrap samples, with repeats
        indices[0] = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5, 6, 6])
        rows, columns = indices[:, :, None], indices[:, None, :]
        r = correlation_of_distances(a[rows, columns], b[rows, columns])
        v = correlation_of_distances(a[rows, columns], b[rows, columns], bias_corrected=False)
        given = relevance_given_of_distances(a[rows, columns], b[rows, columns], c[rows, columns])
        for k, idx in enumerate(indices):
            assert torch.equal(a[idx][:, idx], a[rows, columns][k])  # a[idx][:, idx]: 0 between copies
            assert float(r[k]) == pytest.approx(float(distance_correlation(x[idx], y[idx])), abs=1e-9)
            assert float(v[k]) == pytest.approx(
                float(distance_correlation(x[idx], y[idx], bias_corrected=False)), abs=1e-9
            )
            assert float(given[k]) == pytest.approx(float(relevance_given(x[idx], y[idx], g[idx])), abs=1e-9)


def test_constant_and_non_finite_distances():
    x, y, _ = _sample()
    a, b = distance_matrix(x), distance_matrix(y)
    constant = distance_matrix(torch.ones(12, 3, dtype=torch.float64))
    assert float(correlation_of_distances(constant, b)) == 0.0
    assert float(correlation_of_distances(b, constant, bias_corrected=False)) == 0.0
    one_image = a[torch.zeros(12, dtype=torch.long)][:, torch.zeros(12, dtype=torch.long)]  # all zeros
    assert float(correlation_of_distances(one_image, b)) == 0.0
    labels = label_embedding(torch.arange(12) % 3)
    assert float(relevance_given_of_distances(a, 2 * a, distance_matrix(labels))) == 0.0  # X explained by Y
    assert float(relevance_given_of_distances(constant, b, distance_matrix(labels))) == 0.0
    broken = x.clone()
    broken[3, 2] = math.nan
    nan = distance_matrix(broken)
    assert math.isnan(float(correlation_of_distances(nan, b)))
    assert math.isnan(float(correlation_of_distances(b, nan, bias_corrected=False)))
    for order in ((nan, b, a), (b, nan, a), (a, b, nan)):
        assert math.isnan(float(relevance_given_of_distances(*order)))
    batch = correlation_of_distances(torch.stack([a, nan, constant]), b)  # each matrix on its own
    assert float(batch[0]) == pytest.approx(float(distance_correlation(x, y)), abs=1e-12)
    assert math.isnan(float(batch[1])) and float(batch[2]) == 0.0


def test_distance_entry_points_refuse_what_is_not_a_distance_matrix():
    a = distance_matrix(torch.randn(6, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"`a` must be a tensor \[\.\.\., n, n\] of distance matrices, got list"):
        correlation_of_distances(a.tolist(), a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`b` must be distance matrices \[\.\.\., n, n\] .*got shape \(6, 5\)"):
        correlation_of_distances(a, a[:, :5])
    with pytest.raises(ValueError, match=r"`a` must hold floating-point distances, got torch.int64"):
        correlation_of_distances(a.long(), a)
    with pytest.raises(ValueError, match=r"`a` holds the distances of 3 samples; this estimate needs n ≥ 4"):
        correlation_of_distances(a[:3, :3], a[:3, :3])
    assert float(correlation_of_distances(a[:3, :3], a[:3, :3], bias_corrected=False)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"`a` holds the distances of 6 samples and `g` of 5; .*same samples"):
        relevance_given_of_distances(a, a, a[:5, :5])
    with pytest.raises(ValueError, match=r"`a` has leading \(batch\) dimensions \(2,\) and `b` \(3,\)"):
        correlation_of_distances(a.expand(2, 6, 6), a.expand(3, 6, 6))
    with pytest.raises(ValueError, match=r"`g` must have a zero diagonal .*got 1 on it"):
        relevance_given_of_distances(a, a, a + torch.eye(6, dtype=torch.float64))
