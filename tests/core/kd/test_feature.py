import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kd_probe.core.kd.feature import at, fitnets, match_spatial_size, nst, vid


def _map(*rows: list[float]) -> torch.Tensor:
    """One sample ``[1, C, 1, W]`` whose channel ``c`` is the row ``rows[c]``."""
    return torch.tensor([[[list(row)] for row in rows]])


def _alpha_for(variance: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The α with ``softplus(α) + eps = variance`` exactly."""
    excess = variance.double() - eps
    return (excess + torch.log(-torch.expm1(-excess))).float()


# ------------------------------------------------------------------ FitNets (§6.8)
def test_fitnets_with_an_identity_regressor_is_the_mean_squared_error_summed_over_pairs() -> None:
    maps_s, maps_t = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.zeros(1, 1, 2, 2)
    vectors_s, vectors_t = torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 3.0]])
    assert float(fitnets(maps_s, maps_t)) == pytest.approx(7.5)  # (1 + 4 + 9 + 16) / 4
    assert float(fitnets(vectors_s, vectors_t)) == pytest.approx(2.0)  # (1 + 1 + 4) / 3
    assert float(fitnets([maps_s, vectors_s], [maps_t, vectors_t])) == pytest.approx(9.5)  # 7.5 + 2


def test_fitnets_refuses_features_of_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"`student_feature` \(2, 3, 4, 4\) and `teacher_feature` \(2, 5, 4, 4\)"):
        fitnets(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))


# ------------------------------------------------------------------ AT (§6.9)
def test_at_known_answers() -> None:
    # Q_S = (1, 0), Q_T = (0, 1): mean of squared differences (1 + 1)/2 = 1, times β/2 = 500
    assert float(at(_map([1.0, 0.0]), _map([0.0, 1.0]))) == pytest.approx(500.0)
    # student channels (1, 2) and (2, 1): Q_S = (1+4, 4+1) → (1/√2, 1/√2); teacher (3, 0): Q_T = (9, 0) → (1, 0);
    # ((1/√2 − 1)² + (1/√2)²) / 2 = (2 − √2)/2, times 500 = 250 (2 − √2) ≈ 146.447
    expected = 250 * (2 - math.sqrt(2))
    assert float(at(_map([1.0, 2.0], [2.0, 1.0]), _map([3.0, 0.0]))) == pytest.approx(expected, rel=1e-6)
    # β and the mean over the batch: a second, identical sample halves the loss; β = 2 gives 1/1000 of it
    s, t = torch.cat([_map([1.0, 0.0]), _map([1.0, 0.0])]), torch.cat([_map([0.0, 1.0]), _map([1.0, 0.0])])
    assert float(at(s, t)) == pytest.approx(250.0)
    assert float(at(s, t, beta=2.0)) == pytest.approx(0.5)
    # p = 1: Q = Σ_c |A_c|; student (1, −1) and (1, 1): Q_S = (2, 2); teacher (0, 2): Q_T = (0, 2) → (0, 1)
    assert float(at(_map([1.0, -1.0], [1.0, 1.0]), _map([0.0, 2.0]), p=1.0)) == pytest.approx(250 * (2 - math.sqrt(2)))


def test_at_is_invariant_to_channel_order_and_positive_scale_and_zero_up_to_scale() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 6, 4, 4, generator=g), torch.randn(3, 9, 4, 4, generator=g)
    reference = at(s, t)
    assert float(reference) > 1.0
    torch.testing.assert_close(at(s[:, torch.randperm(6, generator=g)], t), reference)
    torch.testing.assert_close(at(s, t[:, torch.randperm(9, generator=g)]), reference)
    torch.testing.assert_close(at(4.0 * s, t), reference)
    torch.testing.assert_close(at(s, 0.25 * t), reference)
    assert float(at(s, 7.0 * s)) == pytest.approx(0.0, abs=1e-6)


def test_at_pools_the_larger_map_to_the_smaller() -> None:
    s, t = torch.rand(2, 3, 8, 8), torch.rand(2, 5, 4, 4)
    torch.testing.assert_close(at(s, t), at(F.adaptive_avg_pool2d(s, 4), t))
    torch.testing.assert_close(at(t, s), at(t, F.adaptive_avg_pool2d(s, 4)))
    pooled_s, pooled_t = match_spatial_size(torch.rand(1, 2, 8, 3), torch.rand(1, 2, 4, 6))  # each dimension
    assert tuple(pooled_s.shape[2:]) == tuple(pooled_t.shape[2:]) == (4, 3)


# ------------------------------------------------------------------ NST (§6.10)
def test_nst_known_answers_on_a_1x2x1x2_example() -> None:
    # normalised channels: student {(1, 0), (0, 1)}, teacher {(1, 0), (1, 0)}
    s, t = _map([2.0, 0.0], [0.0, 5.0]), _map([3.0, 0.0], [2.0, 0.0])
    # d=2, c=0: k_SS = [[1, 0], [0, 1]] → 2/4; k_TT = all 1 → 1; k_ST = (1, 1, 0, 0) → 2/4: 0.5 + 1 − 2·0.5 = 0.5
    assert float(nst(s, t)) == pytest.approx(0.5)
    # d=2, c=1: k_SS = [[4, 1], [1, 4]] → 10/4; k_TT = all 4 → 4; k_ST = (4, 4, 1, 1) → 10/4: 2.5 + 4 − 5 = 1.5
    assert float(nst(s, t, c=1.0)) == pytest.approx(1.5)
    # d=1, c=0 (linear kernel): ‖mean s − mean t‖² = ‖(0.5, 0.5) − (1, 0)‖² = 0.5
    assert float(nst(s, t, d=1)) == pytest.approx(0.5)
    # two pairs add up; a second sample with equal maps halves the batch mean
    assert float(nst([s, s], [t, s])) == pytest.approx(0.5)
    assert float(nst(torch.cat([s, s]), torch.cat([t, s]))) == pytest.approx(0.25)


def test_nst_is_zero_for_equal_maps_invariant_to_channel_order_and_never_negative() -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 5, 4, 4, generator=g), torch.randn(3, 7, 4, 4, generator=g)
    assert float(nst(s, s.clone())) == pytest.approx(0.0, abs=1e-6)
    reference = nst(s, t)
    torch.testing.assert_close(nst(s[:, torch.randperm(5, generator=g)], t), reference)
    torch.testing.assert_close(nst(s, t[:, torch.randperm(7, generator=g)]), reference)
    torch.testing.assert_close(nst(2.0 * s, t), reference)  # each channel is normalised
    for seed in range(10):
        g.manual_seed(seed)
        for c in (0.0, 1.0):
            value = nst(torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 6, 3, 3, generator=g), c=c)
            assert float(value) >= -1e-6


def test_nst_pools_the_larger_map_to_the_smaller() -> None:
    s, t = torch.rand(2, 3, 2, 4), torch.rand(2, 5, 2, 2)
    torch.testing.assert_close(nst(s, t), nst(F.adaptive_avg_pool2d(s, (2, 2)), t))


# ------------------------------------------------------------------ VID (§6.11)
def test_vid_known_answer_and_growth_with_the_residual() -> None:
    mean, alpha = torch.zeros(1, 1, 1, 2), _alpha_for(torch.tensor([1.0]))  # σ² = 1
    # ½ (log 1 + (2 − 0)² / 1) = 2 at both positions
    assert float(vid(mean, torch.full((1, 1, 1, 2), 2.0), alpha)) == pytest.approx(2.0, rel=1e-5)
    # σ² = 4, residuals (1, 3): ½ (log 4 + (1 + 9)/2 / 4) = ½ log 4 + 5/8
    alpha4 = _alpha_for(torch.tensor([4.0]))
    expected = 0.5 * math.log(4.0) + 5 / 8
    assert float(vid(mean, torch.tensor([[[[1.0, -3.0]]]]), alpha4)) == pytest.approx(expected, rel=1e-5)
    g = torch.Generator().manual_seed(2)
    direction = torch.randn(2, 3, 2, 2, generator=g)
    alpha3 = torch.randn(3, generator=g)
    losses = [float(vid(torch.zeros(2, 3, 2, 2), scale * direction, alpha3)) for scale in (0.0, 0.5, 1.0, 2.0)]
    assert losses == sorted(losses) and losses[0] < losses[-1]


def test_vid_at_the_optimal_variance_is_half_log_mean_residual_plus_one() -> None:
    g = torch.Generator().manual_seed(3)
    mean, teacher = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    m = (teacher - mean).pow(2).mean(dim=(0, 2, 3))  # per-channel mean squared residual
    alpha = _alpha_for(m).requires_grad_(True)
    loss = vid(mean, teacher, alpha)
    assert float(loss.detach()) == pytest.approx(float((0.5 * (m.log() + 1)).mean()), rel=1e-5)
    loss.backward()
    assert alpha.grad is not None and float(alpha.grad.abs().max()) < 1e-5  # a stationary point in α
    for factor in (0.5, 2.0):  # and a minimum: any other variance costs more
        assert float(vid(mean, teacher, _alpha_for(factor * m))) > float(loss.detach())


def test_vid_works_on_vectors_and_refuses_a_wrong_alpha() -> None:
    mean, teacher = torch.zeros(2, 3), torch.ones(2, 3)
    alpha = _alpha_for(torch.ones(3))
    assert float(vid(mean, teacher, alpha)) == pytest.approx(0.5, rel=1e-5)  # ½ (0 + 1)
    with pytest.raises(ValueError, match=r"`alpha` \(2,\) must be .* one α per channel"):
        vid(mean, teacher, torch.zeros(2))
    with pytest.raises(ValueError, match=r"`alpha` has 2 tensors for 1 layer pairs"):
        vid(mean, teacher, [alpha, alpha])


# ------------------------------------------------------------------ all four: gradients and bad input
def _losses() -> dict:
    g = torch.Generator().manual_seed(4)
    alpha = torch.zeros(4)
    return {
        "fitnets": (fitnets, torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)),
        "at": (at, torch.randn(2, 3, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)),
        "nst": (nst, torch.randn(2, 3, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)),
        "vid": (
            lambda s, t: vid(s, t, alpha),
            torch.randn(2, 4, 3, 3, generator=g),
            torch.randn(2, 4, 3, 3, generator=g),
        ),
    }


@pytest.mark.parametrize("name", ["fitnets", "at", "nst", "vid"])
def test_gradients_reach_the_student_and_never_the_teacher(name: str) -> None:
    loss_fn, student, teacher = _losses()[name]
    student.requires_grad_(True)
    teacher.requires_grad_(True)  # even a teacher tensor that requires grad receives none: the loss detaches it
    loss_fn(student, teacher).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None


def test_vid_gradient_reaches_alpha() -> None:
    alpha = torch.zeros(2, requires_grad=True)
    vid(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2), alpha).backward()
    assert alpha.grad is not None and bool((alpha.grad != 0).all())


_maps = torch.zeros(1, 2, 2, 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: at(_maps, _maps, beta=0), r"`beta` must be a finite number > 0, got 0\."),
        (lambda: at(_maps, _maps, beta=-1.0), r"`beta` must be a finite number > 0, got -1\.0\."),
        (lambda: at(_maps, _maps, beta=math.inf), r"`beta` must be a finite number > 0, got inf\."),
        (lambda: at(_maps, _maps, beta=_as_any("1")), r"`beta` must be a finite number > 0, got '1'\."),
        (lambda: at(_maps, _maps, p=0.0), r"`p` must be a finite number > 0, got 0\.0\."),
        (lambda: at(_maps, _maps, p=True), r"`p` must be a finite number > 0, got True\."),
        (lambda: nst(_maps, _maps, d=0), r"`d` \(the polynomial kernel's degree\) must be an integer ≥ 1, got 0\."),
        (lambda: nst(_maps, _maps, d=_as_any(1.5)), r"`d` .* must be an integer ≥ 1, got 1\.5\."),
        (lambda: nst(_maps, _maps, d=True), r"`d` .* must be an integer ≥ 1, got True\."),
        (lambda: nst(_maps, _maps, c=-1.0), r"`c` must be a finite number ≥ 0, got -1\.0\."),
        (lambda: nst(_maps, _maps, c=math.nan), r"`c` must be a finite number ≥ 0, got nan\."),
        (lambda: vid(_maps, _maps, torch.zeros(2), eps=0.0), r"`eps` must be a finite number > 0, got 0\.0\."),
        (lambda: vid(_maps, _maps, torch.zeros(2), eps=-1e-5), r"`eps` must be a finite number > 0, got -1e-05\."),
    ],
)
def test_bad_hyperparameters_are_refused_in_one_sentence(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: at([_maps, _maps], [_maps]), r"`student_features` has 2 tensors and `teacher_features` has 1"),
        (lambda: nst(_maps, torch.zeros(3, 2, 2, 2)), r"pair 0: .*\(1, 2, 2, 2\) .*\(3, 2, 2, 2\) .*same batch size"),
        (lambda: at(torch.zeros(1, 4), torch.zeros(1, 4)), r"must be feature maps \[B, C, H, W\]"),
        (lambda: nst([], []), r"`student_features` must be a float tensor or a non-empty list of float tensors"),
        (
            lambda: fitnets(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2)),
            r"`student_features` must be a float",
        ),
    ],
)
def test_bad_features_are_refused_in_one_sentence(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def _as_any(value: Any) -> Any:
    """A value of the wrong type, passed on purpose."""
    return value
