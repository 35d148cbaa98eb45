import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from kd_probe.core.kd.relation import cc, pkt, rkd, sp

LOSSES: dict[str, Callable[..., torch.Tensor]] = {"sp": sp, "pkt": pkt, "rkd": rkd, "cc": cc}


def _rotation(width: int, seed: int) -> torch.Tensor:
    """A random orthogonal ``width × width`` matrix (float64)."""
    q, _ = torch.linalg.qr(
        torch.randn(width, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def _features(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- known answers, computed by hand from the papers' definitions ---------------------------------------------


def test_sp_known_answer_on_two_samples() -> None:
    # Q_S = [[1, 0], [1, 1]] → G_S = [[1, 1], [1, 2]] → rows normalised: (1, 1)/√2, (1, 2)/√5
    # Q_T = I → G_T = I (already normalised)
    # ‖G_S − G_T‖² = (1/√2 − 1)² + 1/2 + 1/5 + (2/√5 − 1)² = 4 − √2 − 4/√5 = 0.796932
    # L = γ · 0.796932 / B² with B = 2 → 0.199233 · γ
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    expected = (4 - math.sqrt(2) - 4 / math.sqrt(5)) / 4
    assert float(sp(student, torch.eye(2, dtype=torch.float64), gamma=1.0)) == pytest.approx(expected, rel=1e-12)
    assert float(sp(student, torch.eye(2, dtype=torch.float64))) == pytest.approx(3000 * expected, rel=1e-12)


def test_pkt_known_answer_on_two_samples() -> None:
    # student (1, 0), (0, 1): cos = 0 → K = [[1, ½], [½, 1]] → P_S rows (2/3, 1/3), (1/3, 2/3)
    # teacher (1, 0), (1, 0): cos = 1 → K = all ones      → P_T rows (½, ½), (½, ½)
    # KL of each row = ½ log(½ / (2/3)) + ½ log(½ / (1/3)) = ½ log(9/8); two rows → log(9/8)
    # mean over the B² = 4 entries → log(9/8) / 4 = 0.0294458 (ε = 1e-7 moves it by ~1e-7)
    student = torch.eye(2, dtype=torch.float64)
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert float(pkt(student, teacher)) == pytest.approx(math.log(9 / 8) / 4, abs=1e-6)
    assert float(pkt(student, teacher, eps=1e-12)) == pytest.approx(math.log(9 / 8) / 4, abs=1e-11)


def test_pkt_known_answer_on_three_samples() -> None:
    # student (1, 0), (0, 1), (0, 1): cosines 0 (1–2, 1–3) and 1 (2–3)
    #   K = [[1, ½, ½], [½, 1, 1], [½, 1, 1]] → P_S rows (½, ¼, ¼), (⅕, ⅖, ⅖), (⅕, ⅖, ⅖)
    # teacher: three equal vectors → P_T = ⅓ everywhere
    # row 1: ⅓[log(⅓/½) + 2 log(⅓/¼)] = ⅓ log(32/27); rows 2 and 3: ⅓[log(⅓/⅕) + 2 log(⅓/⅖)] = ⅓ log(125/108)
    # mean over 9 entries: (1/27) · log(32/27 · (125/108)²) = (1/27) · log(500000/314928) = 0.0171209
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    teacher = torch.ones(3, 2, dtype=torch.float64)
    assert float(pkt(student, teacher, eps=1e-12)) == pytest.approx(math.log(500000 / 314928) / 27, rel=1e-9)


RIGHT_TRIANGLE = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
EQUILATERAL = [[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]]


def test_rkd_distance_known_answer_on_three_samples() -> None:
    # student: right isosceles triangle, sides 1, 1, √2 → μ = (2 + √2)/3
    #   normalised: 1/μ = 3(2 − √2)/2 = 0.878680 (twice), √2/μ = 3(√2 − 1) = 1.242641
    # teacher: equilateral, all sides 1 → normalised 1, 1, 1
    # differences a = (3√2 − 4)/2 = 0.121320 (twice) and 2a = 0.242641, all ≤ 1 → Huber ½x²
    # Σ over the 6 ordered pairs i ≠ j = 2 · ½(a² + a² + 4a²) = 6a²; / B² = 9 → (2/3)a² = (34 − 24√2)/6 = 0.0098124
    student, teacher = torch.tensor(RIGHT_TRIANGLE, dtype=torch.float64), torch.tensor(EQUILATERAL, dtype=torch.float64)
    expected = (34 - 24 * math.sqrt(2)) / 6
    assert float(rkd(student, teacher, distance_weight=1.0, angle_weight=0.0)) == pytest.approx(expected, rel=1e-9)


def test_rkd_angle_known_answer_on_three_samples() -> None:
    # angles of the student's triangle: 90° at (0, 0), 45° at the two others → cosines 0, √2/2, √2/2
    # teacher: 60° everywhere → cosine ½
    # each vertex appears in 2 ordered triplets (j, k) and (k, j); j = k gives cos 1 in both; j or k = i gives 0
    # Huber ½x²: ½(½)² = 1/8 at the right angle, ½(√2/2 − ½)² = (3 − 2√2)/8 at each 45° vertex
    # Σ = 2 · [1/8 + 2(3 − 2√2)/8] = (7 − 4√2)/4 = 0.335786; / B³ = 27 → (7 − 4√2)/108 = 0.0124365
    student, teacher = torch.tensor(RIGHT_TRIANGLE, dtype=torch.float64), torch.tensor(EQUILATERAL, dtype=torch.float64)
    expected = (7 - 4 * math.sqrt(2)) / 108
    assert float(rkd(student, teacher, distance_weight=0.0, angle_weight=1.0)) == pytest.approx(expected, rel=1e-9)
    # the authors' weights: 25 · distance + 50 · angle
    total = 25 * (34 - 24 * math.sqrt(2)) / 6 + 50 * expected
    assert float(rkd(student, teacher)) == pytest.approx(total, rel=1e-9)


def test_rkd_huber_is_linear_beyond_one() -> None:
    # cosines can differ by up to 2: the student's three points on a line, the middle one between the others,
    # give cos(180°) = −1 at the middle vertex where the teacher's equilateral has ½ → |x| = 1.5 → 1.5 − ½ = 1
    # vertices: middle (−1 vs ½: 1.0), two ends (cos 0° = 1 vs ½: ½(½)² = 1/8 each)
    # Σ = 2 · (1 + 1/8 + 1/8) = 2.5; / 27
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor(EQUILATERAL, dtype=torch.float64)
    assert float(rkd(student, teacher, distance_weight=0.0, angle_weight=1.0)) == pytest.approx(2.5 / 27, rel=1e-9)


def test_cc_known_answer_on_two_samples() -> None:
    # γ = 0.4, P = 2: C_ij = e^{−0.8} (1 + 0.8c + 0.32c²), c the cosine
    # student (1, 0), (0, 1): c = 0 off the diagonal → e^{−0.8}; diagonal c = 1 → 2.12 e^{−0.8}
    # teacher (1, 0), (2, 0): c = 1 everywhere → 2.12 e^{−0.8}
    # C_S − C_T: 0 on the diagonal, −1.12 e^{−0.8} off it → ‖·‖² = 2 · 1.12² e^{−1.6}; / B² = 4 → 1.12² e^{−1.6} / 2
    student = torch.eye(2, dtype=torch.float64)
    teacher = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    assert float(cc(student, teacher)) == pytest.approx(1.12**2 * math.exp(-1.6) / 2, rel=1e-12)
    # P = 1, γ = 1: C = e^{−2}(1 + 2c) → off-diagonal difference 2e^{−2} → 2 · 4e^{−4} / 4 = 2e^{−4}
    assert float(cc(student, teacher, gamma=1.0, order=1)) == pytest.approx(2 * math.exp(-4), rel=1e-12)


# ---- against the papers' definitions written as loops (random batches) ----------------------------------------


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5


def _reference(name: str, student: np.ndarray, teacher: np.ndarray) -> float:
    b = len(student)
    if name == "sp":
        gs, gt = student @ student.T, teacher @ teacher.T
        gs, gt = gs / np.linalg.norm(gs, axis=1, keepdims=True), gt / np.linalg.norm(gt, axis=1, keepdims=True)
        return 3000 * float(((gs - gt) ** 2).sum()) / b**2
    if name == "pkt":

        def conditional(x: np.ndarray) -> np.ndarray:
            x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-7)
            k = (x @ x.T + 1) / 2
            return k / k.sum(axis=1, keepdims=True)

        ps, pt = conditional(student), conditional(teacher)
        return float(
            sum(pt[i, j] * math.log((pt[i, j] + 1e-7) / (ps[i, j] + 1e-7)) for i in range(b) for j in range(b)) / b**2
        )
    if name == "rkd":

        def distances(x: np.ndarray) -> dict[tuple[int, int], float]:
            d = {(i, j): float(np.linalg.norm(x[i] - x[j])) for i in range(b) for j in range(b) if i != j}
            mean = sum(d.values()) / len(d)
            return {key: value / mean for key, value in d.items()}

        def cosine(x: np.ndarray, i: int, j: int, k: int) -> float:
            if i in (j, k):
                return 0.0
            u, v = x[j] - x[i], x[k] - x[i]
            return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

        ds, dt = distances(student), distances(teacher)
        distance = sum(_huber(ds[key] - dt[key]) for key in ds) / b**2
        triplets = list(itertools.product(range(b), repeat=3))
        angle = sum(_huber(cosine(student, *t) - cosine(teacher, *t)) for t in triplets) / b**3
        return 25 * distance + 50 * angle

    # cc
    def correlation(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = x @ x.T
        return math.exp(-0.8) * (1 + 0.8 * c + 0.32 * c**2)

    return float(((correlation(student) - correlation(teacher)) ** 2).sum()) / b**2


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_matches_the_papers_definition_written_as_loops(name: str) -> None:
    student, teacher = _features(6, 5, seed=1) * 2, _features(6, 9, seed=2)
    expected = _reference(name, student.numpy(), teacher.numpy())
    assert float(LOSSES[name](student, teacher)) == pytest.approx(expected, rel=1e-9)


# ---- identities --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_when_the_relations_are_equal(name: str) -> None:
    features = _features(5, 7)
    assert float(LOSSES[name](features, features.clone())) == pytest.approx(0.0, abs=1e-12)
    # the student alone changed: the loss is positive
    assert float(LOSSES[name](_features(5, 7, seed=9), features)) > 1e-4


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_invariant_to_rotations_and_a_global_scale_of_either_network(name: str) -> None:
    student, teacher = _features(6, 4, seed=3), _features(6, 8, seed=4)
    reference = float(LOSSES[name](student, teacher))
    rotated = LOSSES[name](student @ _rotation(4, 5) * 3.7, teacher @ _rotation(8, 6) * 0.2)
    # PKT's ε in x / (‖x‖ + ε) makes its invariance hold up to ~ε/‖x‖
    assert float(rotated) == pytest.approx(reference, rel=1e-6 if name == "pkt" else 1e-9)


@pytest.mark.parametrize("name", ["pkt", "cc"])
def test_cosine_kernels_are_invariant_to_scaling_each_sample(name: str) -> None:
    student, teacher = _features(6, 4, seed=3), _features(6, 8, seed=4)
    scales = torch.tensor([0.1, 1.0, 2.0, 5.0, 0.7, 30.0], dtype=torch.float64)[:, None]
    reference = float(LOSSES[name](student, teacher))
    assert float(LOSSES[name](student * scales, teacher * scales.flip(0))) == pytest.approx(reference, rel=1e-6)


def test_sp_is_not_invariant_to_scaling_each_sample() -> None:
    # G = QQᵀ scaled per sample is diag(a)·G·diag(a); row normalisation removes a_i, not the column factors a_j
    features = _features(5, 6, seed=7)
    scales = torch.tensor([0.2, 1.0, 3.0, 1.0, 8.0], dtype=torch.float64)[:, None]
    assert float(sp(features * scales, features)) > 1.0


def test_rkd_is_invariant_to_translations() -> None:
    student, teacher = _features(6, 4, seed=3), _features(6, 8, seed=4)
    shifted = rkd(student + _features(1, 4, seed=8) * 10, teacher - 5.0)
    assert float(shifted) == pytest.approx(float(rkd(student, teacher)), rel=1e-9)


def test_rkd_terms_are_each_invariant_to_a_global_scale() -> None:
    student, teacher = _features(6, 4, seed=3), _features(6, 8, seed=4)
    for weights in ({"distance_weight": 1.0, "angle_weight": 0.0}, {"distance_weight": 0.0, "angle_weight": 1.0}):
        assert float(rkd(student * 40, teacher, **weights)) == pytest.approx(float(rkd(student, teacher, **weights)))


def test_rkd_on_one_or_two_samples() -> None:
    # one sample: no pair, the loss is 0 (and still differentiable); two samples: the angle term has no triplet
    one = torch.randn(1, 3, requires_grad=True)
    loss = rkd(one, torch.randn(1, 5))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(one.grad, torch.zeros(1, 3))  # type: ignore[arg-type]
    two = rkd(torch.randn(2, 3), torch.randn(2, 5), distance_weight=0.0)  # j = k ≠ i: cos 1 in both, up to rounding
    assert float(two) == pytest.approx(0.0, abs=1e-12)


def test_cc_of_order_one_is_the_scaled_inner_product_loss() -> None:
    # the P = 1 kernel e^{−2γ}(1 + 2γc) differs from the plain cosine c by a constant and the factor 2γe^{−2γ}
    student, teacher = _features(6, 4, seed=3), _features(6, 8, seed=4)
    s = torch.nn.functional.normalize(student, dim=1)
    t = torch.nn.functional.normalize(teacher, dim=1)
    plain = ((s @ s.T - t @ t.T) ** 2).mean()
    gamma = 0.4
    expected = (2 * gamma * math.exp(-2 * gamma)) ** 2 * float(plain)
    assert float(cc(student, teacher, gamma=gamma, order=1)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_feature_maps_are_flattened_per_sample(name: str) -> None:
    student, teacher = _features(4, 2, 3, 3, seed=1), _features(4, 5, 2, 2, seed=2)
    flat = LOSSES[name](student.flatten(1), teacher.flatten(1))
    assert float(LOSSES[name](student, teacher)) == pytest.approx(float(flat), rel=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_half_precision_features_are_computed_in_float32(name: str) -> None:
    student, teacher = _features(4, 6, seed=1), _features(4, 3, seed=2)
    loss = LOSSES[name](student.to(torch.bfloat16), teacher.to(torch.bfloat16))
    assert loss.dtype == torch.float32
    expected = float(LOSSES[name](student.to(torch.bfloat16).double(), teacher.to(torch.bfloat16).double()))
    assert float(loss) == pytest.approx(expected, rel=1e-4)


# ---- gradients ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_the_student_only(name: str) -> None:
    student = _features(5, 4, seed=1).requires_grad_()
    teacher = _features(5, 6, seed=2).requires_grad_()
    LOSSES[name](student, teacher).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # a teacher without grad stays without
    plain = _features(5, 6, seed=2)
    LOSSES[name](_features(5, 4, seed=1).requires_grad_(), plain).backward()
    assert plain.grad is None and not plain.requires_grad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_stay_finite_for_degenerate_students(name: str) -> None:
    # two coincident samples and one zero sample: distances of 0 and norms of 0 must not give NaN
    student = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [-1.0, 0.5]], requires_grad=True)
    loss = LOSSES[name](student, _features(4, 3, seed=2).float())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()  # type: ignore[arg-type]


# ---- refusals ----------------------------------------------------------------------------------------------------

BAD_SETTINGS = [
    (sp, {"gamma": 0}, r"`gamma` must be a finite number > 0, got 0\."),
    (sp, {"gamma": -3000.0}, r"`gamma` must be a finite number > 0, got -3000\.0\."),
    (sp, {"gamma": float("nan")}, r"`gamma` must be a finite number > 0, got nan\."),
    (sp, {"gamma": True}, r"`gamma` must be a finite number > 0, got True\."),
    (pkt, {"eps": 0.0}, r"`eps` must be a finite number > 0, got 0\.0\."),
    (pkt, {"eps": "1e-7"}, r"`eps` must be a finite number > 0, got '1e-7'\."),
    (rkd, {"distance_weight": -1.0}, r"`distance_weight` must be a finite number ≥ 0, got -1\.0\."),
    (rkd, {"angle_weight": float("inf")}, r"`angle_weight` must be a finite number ≥ 0, got inf\."),
    (rkd, {"distance_weight": 0, "angle_weight": 0}, r"`distance_weight` and `angle_weight` are both 0"),
    (cc, {"gamma": -0.4}, r"`gamma` must be a finite number > 0, got -0\.4\."),
    (cc, {"order": 0}, r"`order` must be an integer ≥ 1 \(the order P of the Taylor expansion\), got 0\."),
    (cc, {"order": 2.0}, r"`order` must be an integer ≥ 1 .*, got 2\.0\."),
    (cc, {"order": True}, r"`order` must be an integer ≥ 1 .*, got True\."),
]


@pytest.mark.parametrize(("loss", "settings", "message"), BAD_SETTINGS)
def test_bad_settings_are_refused_in_one_sentence(
    loss: Callable[..., torch.Tensor], settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        loss(torch.randn(3, 4), torch.randn(3, 5), **settings)


BAD_INPUTS = [
    (torch.randn(3, 4), torch.randn(2, 4), r"`student` \(3, 4\) and `teacher` \(2, 4\) must hold the same number of"),
    (torch.randn(3), torch.randn(3, 4), r"`student` must be a float tensor of one feature per sample .*, got \(3,\)"),
    (torch.randn(3, 4), torch.ones(3, 4, dtype=torch.long), r"`teacher` must be a float tensor .*torch\.int64"),
    (torch.randn(3, 4), [[1.0]], r"`teacher` must be a float tensor .*, got list\."),
]


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize(("student", "teacher", "message"), BAD_INPUTS)
def test_bad_features_are_refused_in_one_sentence(name: str, student: object, teacher: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LOSSES[name](student, teacher)
