"""The math of the logit distillation methods (methods §6.4–§6.7): known answers worked out by hand on 1×3 and 2×3
logits, the papers' identities, gradients to the student only, and every bad hyper-parameter refused.

Logits ``log v`` make the softmax a plain ratio, ``softmax(log v) = v / Σv``, so the answers can be checked on paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from kd_probe.core.kd.logit import _pearson, _standardise, dist, dkd, kd, logit_standard_kd
from kd_probe.core.losses import logit_distillation_loss


def logits(*rows: list[float]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


def random_pair(batch: int = 6, classes: int = 5, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 3
    return student, teacher, torch.randint(classes, (batch,), generator=generator)


# --------------------------------------------------------------------------------------------------------- KD (§6.4)
def test_kd_known_answer() -> None:
    # p_S = [1, 1, 2]/4, p_T = [2, 1, 1]/4, T = 1:
    # KL(p_T ‖ p_S) = ½·ln(½/¼) + ¼·ln(¼/¼) + ¼·ln(¼/½) = ½·ln 2 − ¼·ln 2 = ¼·ln 2
    assert float(kd(logits([1, 1, 2]), logits([2, 1, 1]), temperature=1.0)) == pytest.approx(math.log(2) / 4)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 7])
def test_kd_is_exactly_the_existing_hinton_loss(temperature: float) -> None:
    student, teacher, _ = random_pair()
    assert torch.equal(kd(student, teacher, temperature), logit_distillation_loss(student, teacher, temperature))


# -------------------------------------------------------------------------------------------------------- DKD (§6.5)
def test_dkd_known_answers() -> None:
    student, teacher, labels = logits([1, 1, 2]), logits([2, 1, 1]), torch.tensor([0])
    # p_S = [¼, ¼, ½], p_T = [½, ¼, ¼], target 0, T = 1.
    # TCKD: b_T = [½, ½], b_S = [¼, ¾]: ½·ln(½/¼) + ½·ln(½/¾) = ½·ln(4/3) ≈ 0.143841
    # NCKD: p̂_T = [¼, ¼]/½ = [½, ½], p̂_S = [¼, ½]/¾ = [⅓, ⅔]: ½·ln(½/⅓) + ½·ln(½/⅔) = ½·ln(9/8) ≈ 0.058892
    tckd, nckd = math.log(4 / 3) / 2, math.log(9 / 8) / 2
    one = {"temperature": 1.0}
    assert float(dkd(student, teacher, labels, alpha=1.0, beta=0.0, **one)) == pytest.approx(tckd)
    assert float(dkd(student, teacher, labels, alpha=0.0, beta=1.0, **one)) == pytest.approx(nckd)
    # defaults α = 1, β = 8: 0.143841 + 8·0.058892 = 0.614973
    assert float(dkd(student, teacher, labels, **one)) == pytest.approx(tckd + 8 * nckd)
    assert float(dkd(student, teacher, labels, **one)) == pytest.approx(0.614973, abs=1e-6)
    # second sample: p_S = [¼, ½, ¼], p_T = [¼, ¼, ½], target 1.
    # TCKD: b_T = [¼, ¾], b_S = [½, ½]: ¼·ln(¼/½) + ¾·ln(¾/½) = −¼·ln 2 + ¾·ln(3/2)
    # NCKD over classes 0, 2: p̂_T = [¼, ½]/¾ = [⅓, ⅔], p̂_S = [¼, ¼]/½ = [½, ½]: ⅓·ln(⅔) + ⅔·ln(4/3)
    tckd_2 = -math.log(2) / 4 + 0.75 * math.log(1.5)
    nckd_2 = math.log(2 / 3) / 3 + 2 / 3 * math.log(4 / 3)
    batch = dkd(logits([1, 1, 2], [1, 2, 1]), logits([2, 1, 1], [1, 1, 2]), torch.tensor([0, 1]), **one)
    assert float(batch) == pytest.approx(((tckd + 8 * nckd) + (tckd_2 + 8 * nckd_2)) / 2)  # the batch mean


def test_dkd_terms_match_their_definitions_in_probability_space() -> None:
    student, teacher, labels = random_pair()
    temperature = 4.0
    p_s, p_t = (student / temperature).softmax(-1), (teacher / temperature).softmax(-1)
    target = torch.nn.functional.one_hot(labels, 5).bool()
    b_s = torch.stack((p_s[target], 1 - p_s[target]), -1)
    b_t = torch.stack((p_t[target], 1 - p_t[target]), -1)
    tckd = (b_t * (b_t / b_s).log()).sum(-1)
    others_s, others_t = p_s[~target].view(6, 4), p_t[~target].view(6, 4)
    others_s, others_t = others_s / others_s.sum(-1, keepdim=True), others_t / others_t.sum(-1, keepdim=True)
    nckd = (others_t * (others_t / others_s).log()).sum(-1)
    # with β = 0, DKD is α × TCKD
    got = dkd(student, teacher, labels, alpha=2.5, beta=0.0, temperature=temperature)
    assert float(got) == pytest.approx(2.5 * temperature**2 * float(tckd.mean()), rel=1e-9)
    got = dkd(student, teacher, labels, alpha=0.0, beta=3.0, temperature=temperature)
    assert float(got) == pytest.approx(3.0 * temperature**2 * float(nckd.mean()), rel=1e-9)


def test_dkd_decomposes_kd_per_sample() -> None:
    # Zhao et al. Eq. (1): KD = TCKD + (1 − p_T,target) · NCKD, for each sample.
    student, teacher, labels = random_pair(batch=8, classes=7, seed=3)
    temperature = 4.0
    for i in range(8):
        s, t, y = student[i : i + 1], teacher[i : i + 1], labels[i : i + 1]
        tckd = dkd(s, t, y, alpha=1.0, beta=0.0, temperature=temperature)
        nckd = dkd(s, t, y, alpha=0.0, beta=1.0, temperature=temperature)
        p_target = (t / temperature).softmax(-1)[0, y[0]]
        assert float(kd(s, t, temperature)) == pytest.approx(float(tckd + (1 - p_target) * nckd), rel=1e-9, abs=1e-12)


def test_dkd_scales_with_the_square_of_the_temperature() -> None:
    student, teacher, labels = random_pair()
    at_one = dkd(student, teacher, labels, temperature=1.0)
    assert float(dkd(3 * student, 3 * teacher, labels, temperature=3.0)) == pytest.approx(9 * float(at_one))


def test_dkd_is_zero_when_the_student_is_the_teacher() -> None:
    student, _, labels = random_pair()
    assert float(dkd(student, student.clone(), labels)) == pytest.approx(0.0, abs=1e-12)


def test_dkd_is_stable_for_a_confident_teacher() -> None:
    # p_T,target rounds to 1 in float32: log(1 − p) from probabilities would be −inf; log-sum-exp keeps it finite
    student = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    loss = dkd(student, torch.tensor([[200.0, 0.0, 1.0]]), torch.tensor([0]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("warmup", "epoch", "factor"),
    [(20, None, 1.0), (20, 1, 1 / 20), (20, 10, 0.5), (20, 20, 1.0), (20, 35, 1.0), (0, 1, 1.0), (5, 0, 0.0)],
)
def test_dkd_warm_up_applies_only_with_an_epoch(warmup: float, epoch: float | None, factor: float) -> None:
    # mdistiller: min(epoch / warmup, 1) · DKD, epochs counted from 1
    student, teacher, labels = random_pair()
    full = dkd(student, teacher, labels)
    assert float(dkd(student, teacher, labels, warmup=warmup, epoch=epoch)) == pytest.approx(factor * float(full))


# ------------------------------------------------------------------------------------------------------- DIST (§6.6)
def test_dist_known_answers() -> None:
    # One sample: p_S = [1, 2, 1]/4, p_T = [1, 1, 2]/4; ρ is unchanged by the 1/4, so centre [1, 2, 1] and [1, 1, 2]:
    # a = [−⅓, ⅔, −⅓], b = [−⅓, −⅓, ⅔]; a·b = (1 − 2 − 2)/9 = −⅓; |a|² = |b|² = 6/9; ρ = −⅓ / ⅔ = −½.
    # inter = 1 − (−½) = 3/2. A class across one sample is constant: ρ = 0 (authors' ε), intra = 1.
    student, teacher = logits([1, 2, 1]), logits([1, 1, 2])
    assert float(dist(student, teacher, gamma=0.0)) == pytest.approx(1.5)
    assert float(dist(student, teacher)) == pytest.approx(1.5 + 1.0)
    # Two samples: S = [1, 2, 5]/8, [5, 1, 2]/8; T = [1, 2, 5]/8, [2, 5, 1]/8.
    # inter: sample 1 ρ = 1; sample 2 centred (mean 8/3) a = [7, −5, −2]/3, b = [−2, 7, −5]/3,
    #        a·b = (−14 − 35 + 10)/9 = −39/9, |a|² = |b|² = 78/9, ρ = −½  →  inter = 1 − (1 − ½)/2 = ¾.
    # intra: two values per class, ρ = sign(ΔS)·sign(ΔT) with ΔS = [4, −1, −3], ΔT = [1, 3, −4]: +1, −1, +1
    #        →  intra = 1 − (1 − 1 + 1)/3 = ⅔.   DIST = ¾ + ⅔ = 17/12 at β = γ = τ = 1.
    student, teacher = logits([1, 2, 5], [5, 1, 2]), logits([1, 2, 5], [2, 5, 1])
    assert float(dist(student, teacher, gamma=0.0)) == pytest.approx(0.75)
    assert float(dist(student, teacher, beta=0.0)) == pytest.approx(2 / 3)
    assert float(dist(student, teacher)) == pytest.approx(17 / 12)
    assert float(dist(student, teacher, beta=2.0, gamma=3.0)) == pytest.approx(2 * 0.75 + 3 * 2 / 3)


def test_dist_is_zero_when_the_student_is_the_teacher() -> None:
    student, _, _ = random_pair()
    # zero up to the authors' ε: ρ(a, a) = |a|² / (|a|² + ε) falls short of 1 by about ε/|a|²
    assert float(dist(student, student.clone(), temperature=4.0)) == pytest.approx(0.0, abs=1e-4)
    assert float(dist(student, student.clone(), temperature=4.0, eps=1e-30)) == pytest.approx(0.0, abs=1e-12)


def test_dist_scales_with_the_square_of_the_temperature() -> None:
    student, teacher, _ = random_pair()
    assert float(dist(4 * student, 4 * teacher, temperature=4.0)) == pytest.approx(16 * float(dist(student, teacher)))


def test_pearson_is_torch_corrcoef_and_invariant_to_a_positive_affine_change() -> None:
    first, second, _ = random_pair(batch=4, classes=9)
    expected = torch.stack([torch.corrcoef(torch.stack((a, b)))[0, 1] for a, b in zip(first, second, strict=True)])
    assert torch.allclose(_pearson(first, second), expected, atol=1e-8)
    assert torch.allclose(_pearson(3.0 * first + 0.7, second), _pearson(first, second), atol=1e-8)
    assert torch.allclose(_pearson(first, 0.01 * second - 5), _pearson(first, second), atol=1e-6)
    assert torch.allclose(_pearson(-first, second), -_pearson(first, second), atol=1e-8)  # a negative scale flips ρ


# ------------------------------------------------------------------------------------------- Logit standardisation (§6.7)
def test_logit_standard_kd_known_answer() -> None:
    # s = [0, 1, 2], t = [2, 1, 0]: mean 1, population σ = √(2/3), so Z(s) = [−c, 0, c] and Z(t) = [c, 0, −c] with
    # c = √(3/2). At τ = c / ln 2, Z/τ = ±ln 2: p_S = [1, 2, 4]/7, p_T = [4, 2, 1]/7.
    # KL(p_T ‖ p_S) = 4/7·ln 4 + 2/7·ln 1 + 1/7·ln(1/4) = 3/7·ln 4; times τ² = (3/2)/ln²2: 9 / (7·ln 2) ≈ 1.854894
    tau = math.sqrt(1.5) / math.log(2)
    got = logit_standard_kd(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[2.0, 1.0, 0.0]]), temperature=tau)
    assert float(got) == pytest.approx(9 / (7 * math.log(2)), rel=1e-6)


def test_logit_standard_kd_ignores_each_samples_shift_and_positive_scale() -> None:
    student, teacher, _ = random_pair()
    scale = torch.tensor([[0.1], [1.0], [2.0], [5.0], [30.0], [0.5]], dtype=torch.float64)
    shift = torch.tensor([[-3.0], [0.0], [1.0], [100.0], [-7.0], [2.0]], dtype=torch.float64)
    reference = logit_standard_kd(student, teacher)
    assert float(logit_standard_kd(student, teacher * scale + shift)) == pytest.approx(float(reference), rel=1e-6)
    assert float(logit_standard_kd(student * scale.flip(0) - shift, teacher)) == pytest.approx(
        float(reference), rel=1e-6
    )
    assert float(logit_standard_kd(student, student * scale + shift)) == pytest.approx(0.0, abs=1e-9)


def test_logit_standard_kd_is_kd_on_standardised_logits() -> None:
    student, teacher, _ = random_pair()
    z_student, z_teacher = _standardise(student, 0.0), _standardise(teacher, 0.0)
    assert torch.allclose(z_student.mean(-1), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z_student.std(-1, correction=0), torch.ones(6, dtype=torch.float64))
    assert z_student.abs().max() <= math.sqrt(5 - 1)  # the paper's bound √(K − 1)
    for temperature in (1.0, 2.0, 4.0):
        expected = kd(z_student, z_teacher, temperature)
        assert float(logit_standard_kd(z_student, z_teacher, temperature)) == pytest.approx(float(expected), rel=1e-6)


# ------------------------------------------------------------------------------------------------------- all four
METHODS: dict[str, Callable[..., Tensor]] = {
    "kd": lambda s, t, y: kd(s, t),
    "dkd": lambda s, t, y: dkd(s, t, y),
    "dist": lambda s, t, y: dist(s, t),
    "logit_standard_kd": lambda s, t, y: logit_standard_kd(s, t),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_gradients_reach_the_student_only(name: str) -> None:
    student, teacher, labels = random_pair()
    student.requires_grad_(True)
    teacher.requires_grad_(True)  # even then the loss detaches it
    METHODS[name](student, teacher, labels).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


BAD: list[tuple[Callable[..., Any], dict[str, Any], str]] = [
    (kd, {"temperature": 0.0}, r"`temperature` must be > 0, got 0.0"),
    (kd, {"temperature": -4}, r"`temperature` must be > 0, got -4"),
    (kd, {"temperature": True}, r"`temperature` must be > 0, got True"),
    (kd, {"temperature": "4"}, r"`temperature` must be > 0, got '4'"),
    (dkd, {"alpha": -1.0}, r"`alpha` must be a finite number ≥ 0, got -1.0"),
    (dkd, {"beta": float("nan")}, r"`beta` must be a finite number ≥ 0, got nan"),
    (dkd, {"temperature": float("inf")}, r"`temperature` must be > 0, got inf"),
    (dkd, {"warmup": -5}, r"`warmup` must be a finite number ≥ 0, got -5"),
    (dkd, {"epoch": -1}, r"`epoch` must be a finite number ≥ 0, got -1"),
    (dkd, {"labels": None}, r"DKD needs the class labels: pass `labels`"),
    (
        dkd,
        {"labels": torch.zeros(2)},
        r"`labels` must be a \[2\] tensor of integer class indices, got \(2,\) torch.float32",
    ),
    (
        dkd,
        {"labels": torch.zeros(2, 1, dtype=torch.long)},
        r"`labels` must be a \[2\] tensor .* got \(2, 1\) torch.int64",
    ),
    (dkd, {"labels": [0, 1]}, r"`labels` must be a \[2\] tensor of integer class indices, got list"),
    (dkd, {"labels": torch.tensor([0, 3])}, r"`labels` must be class indices in \[0, 3\), got values from 0 to 3"),
    (dkd, {"labels": torch.tensor([-1, 0])}, r"`labels` must be class indices in \[0, 3\), got values from -1 to 0"),
    (dist, {"beta": -0.5}, r"`beta` must be a finite number ≥ 0, got -0.5"),
    (dist, {"gamma": float("inf")}, r"`gamma` must be a finite number ≥ 0, got inf"),
    (dist, {"temperature": 0}, r"`temperature` must be > 0, got 0"),
    (dist, {"eps": 0.0}, r"`eps` must be a finite number > 0, got 0.0"),
    (logit_standard_kd, {"temperature": -2.0}, r"`temperature` must be > 0, got -2.0"),
    (logit_standard_kd, {"eps": -1e-7}, r"`eps` must be a finite number > 0, got -1e-07"),
]


@pytest.mark.parametrize(("method", "kwargs", "match"), BAD, ids=lambda v: getattr(v, "__name__", None))
def test_bad_hyper_parameters_are_refused_in_one_sentence(method: Callable[..., Any], kwargs: dict, match: str) -> None:
    student, teacher = torch.zeros(2, 3), torch.zeros(2, 3)
    if method is dkd:
        kwargs = {"labels": torch.tensor([0, 1]), **kwargs}
    with pytest.raises(ValueError, match=match):
        method(student, teacher, **kwargs)


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_logits_are_refused_in_one_sentence(name: str) -> None:
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"`student_logits` \(2, 3\) and `teacher_logits` \(2, 4\) must have the same"):
        METHODS[name](torch.zeros(2, 3), torch.zeros(2, 4), labels)
    with pytest.raises(ValueError, match=r"`student_logits` must be float logits \[B, K\], got \(6,\) torch.float32"):
        METHODS[name](torch.zeros(6), torch.zeros(6), labels)


def test_dkd_needs_two_classes() -> None:
    with pytest.raises(ValueError, match=r"DKD needs at least 2 classes .* got logits \(2, 1\)"):
        dkd(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 0]))
