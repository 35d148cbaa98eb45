"""The NCE objective of CRD (methods §6.16): known answers by hand, identities, gradients, refused arguments."""

import math

import numpy as np
import pytest
import torch

from kd_probe.core.kd.contrastive import crd, crd_normalization

E = math.e
X, Y = [1.0, 0.0], [0.0, 1.0]
MINUS_X, MINUS_Y = [-1.0, 0.0], [0.0, -1.0]


def _one(
    anchor: list[float], positive: list[float], negatives: list[list[float]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([anchor]), torch.tensor([positive]), torch.tensor([negatives])


# One anchor, two negatives, τ = 1, N = 4 samples: the noise term K/N = 2/4 = 1/2.
# P(v) = exp(⟨a, v⟩)/Z, h = P / (P + 1/2), loss = −log h(p) − Σ_j log(1 − h(n_j)).
KNOWN = [
    # ⟨a,p⟩ = 1, ⟨a,n⟩ = 0, Z = 1: P(p) = e, P(n) = 1 → −log(e/(e + ½)) − 2·log(½/(1 + ½)) = log(1 + 1/(2e)) + 2·log 3
    (X, X, [Y, MINUS_Y], 1.0, math.log(1 + 1 / (2 * E)) + 2 * math.log(3)),
    # every score 0, Z = 2: P = ½ everywhere → h = ½, 1 − h = ½ → −3·log ½ = 3·log 2
    (X, Y, [MINUS_Y, Y], 2.0, 3 * math.log(2)),
    # ⟨a,p⟩ = 1, ⟨a,n⟩ = −1, Z = e: P(p) = 1 → h = 1/(3/2) = 2/3; P(n) = e⁻² → 1 − h = ½/(½ + e⁻²)
    (X, X, [MINUS_X, MINUS_X], E, -math.log(2 / 3) - 2 * math.log(0.5 / (0.5 + E**-2))),
]


@pytest.mark.parametrize(("anchor", "positive", "negatives", "z", "expected"), KNOWN)
def test_known_answers_by_hand(anchor, positive, negatives, z, expected) -> None:
    value = crd(*_one(anchor, positive, negatives), normalization=z, num_samples=4, temperature=1.0)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_a_batch_is_the_mean_over_its_anchors() -> None:
    first, second = _one(*KNOWN[0][:3]), _one(*KNOWN[2][:3])
    anchor, positive, negatives = (torch.cat([a, b]) for a, b in zip(first, second, strict=True))
    value = crd(anchor, positive, negatives, normalization=torch.tensor(E), num_samples=4, temperature=1.0)
    singles = [crd(*first, E, 4, 1.0), crd(*second, E, 4, 1.0)]
    assert float(value) == pytest.approx(float(sum(singles)) / 2, rel=1e-6)


def test_temperature_divides_the_scores() -> None:
    # ⟨a,p⟩ = 1 at τ = ½ is the score 2 at τ = 1: the same as the anchor 2·x at τ = 1
    anchor, positive, negatives = _one(X, X, [Y, MINUS_X])
    halved = crd(anchor, positive, negatives, 1.0, 4, temperature=0.5)
    assert float(halved) == pytest.approx(float(crd(anchor * 2, positive, negatives, 1.0, 4, temperature=1.0)))


def test_only_z_times_the_noise_ratio_matters() -> None:
    # h = e^{s/τ} / (e^{s/τ} + Z·K/N): doubling Z and N leaves the loss unchanged
    g = torch.Generator().manual_seed(0)
    anchor, positive, negatives = (
        torch.randn(3, 5, generator=g),
        torch.randn(3, 5, generator=g),
        torch.randn(3, 4, 5, generator=g),
    )
    a = crd(anchor, positive, negatives, normalization=3.0, num_samples=10, temperature=0.5)
    b = crd(anchor, positive, negatives, normalization=6.0, num_samples=20, temperature=0.5)
    torch.testing.assert_close(a, b)


def test_matches_the_papers_critic_written_out_in_numpy() -> None:
    # eq. (19) with the authors' Z: h(v) = exp(s/τ) / (exp(s/τ) + Z·K/N), float64 numpy, probabilities not logs
    g = torch.Generator().manual_seed(1)
    anchor = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    positive = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    negatives = torch.nn.functional.normalize(torch.randn(6, 10, 8, generator=g), dim=2)
    tau, z, n = 0.07, 1234.5, 50
    a, p, ns = anchor.double().numpy(), positive.double().numpy(), negatives.double().numpy()
    exp_pos = np.exp((a * p).sum(1) / tau)
    exp_neg = np.exp(np.einsum("bkd,bd->bk", ns, a) / tau)
    noise = z * 10 / n
    per_anchor = np.log(exp_pos / (exp_pos + noise)) + np.log(noise / (exp_neg + noise)).sum(1)
    assert float(crd(anchor, positive, negatives, z, n, tau)) == pytest.approx(-per_anchor.mean(), rel=1e-5)


def test_loss_is_positive_falls_with_the_positive_score_and_rises_with_a_negative_score() -> None:
    anchor, _, negatives = _one(X, X, [Y, MINUS_Y])
    angles = torch.linspace(0.0, math.pi, 7)
    toward = [crd(anchor, torch.stack([a.cos(), a.sin()])[None], negatives, 1.0, 4, 0.5) for a in angles]
    values = torch.stack(toward)
    assert bool((values > 0).all())
    assert bool((values[:-1] < values[1:]).all())  # the positive turning away from the anchor raises the loss
    near = crd(anchor, anchor, torch.tensor([[[0.9, 0.1], [0.0, -1.0]]]), 1.0, 4, 0.5)
    far = crd(anchor, anchor, torch.tensor([[[-0.9, 0.1], [0.0, -1.0]]]), 1.0, 4, 0.5)
    assert float(near) > float(far)  # a negative close to the anchor costs more


@pytest.mark.parametrize(
    ("anchor", "positive", "negatives", "expected"),
    [
        # every score 0: exp(0) = 1, so Z = N · 1
        (X, Y, [MINUS_Y, Y], 8.0),
        # scores 1, −1, 1: mean of e, e⁻¹, e is (2e + 1/e)/3, times N = 8
        (X, X, [MINUS_X, X], 8 * (2 * E + 1 / E) / 3),
    ],
)
def test_normalization_is_n_times_the_mean_exponential_score(anchor, positive, negatives, expected) -> None:
    z = crd_normalization(*_one(anchor, positive, negatives), num_samples=8, temperature=1.0)
    assert z.dtype == torch.float64 and not z.requires_grad
    assert float(z) == pytest.approx(expected, rel=1e-6)


def test_normalization_makes_the_mean_density_one_over_n() -> None:
    g = torch.Generator().manual_seed(2)
    anchor, positive, negatives = (
        torch.randn(4, 3, generator=g),
        torch.randn(4, 3, generator=g),
        torch.randn(4, 5, 3, generator=g),
    )
    z = crd_normalization(anchor, positive, negatives, num_samples=100, temperature=0.3)
    scores = torch.cat([(anchor * positive).sum(1, keepdim=True), torch.einsum("bkd,bd->bk", negatives, anchor)], 1)
    assert float((scores.double() / 0.3).exp().div(z).mean()) == pytest.approx(1 / 100)


def test_gradients_reach_the_anchor_only() -> None:
    anchor = torch.randn(2, 3, requires_grad=True)
    positive, negatives = torch.randn(2, 3, requires_grad=True), torch.randn(2, 4, 3, requires_grad=True)
    crd(anchor, positive, negatives, 5.0, 10).backward()
    assert anchor.grad is not None and bool(anchor.grad.abs().sum() > 0)
    assert positive.grad is None and negatives.grad is None  # memory-bank rows are constants


def test_computes_in_at_least_float32_and_keeps_float64() -> None:
    anchor, positive, negatives = torch.ones(1, 2) / 2**0.5, torch.ones(1, 2) / 2**0.5, torch.zeros(1, 3, 2)
    half = crd(anchor.half(), positive.half(), negatives.half(), 2e5, 50000, 0.07)  # e^(1/0.07) overflows float16
    assert half.dtype == torch.float32 and bool(torch.isfinite(half))
    assert crd(anchor.double(), positive.double(), negatives.double(), 2e5, 50000).dtype == torch.float64


GOOD = {"normalization": 1.0, "num_samples": 4, "temperature": 0.07}
A, P, N = torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4, 3)


@pytest.mark.parametrize(
    ("change", "inputs", "message"),
    [
        ({"temperature": 0}, (A, P, N), r"`temperature` must be > 0, got 0"),
        ({"temperature": -1.0}, (A, P, N), r"`temperature` must be > 0, got -1.0"),
        ({"temperature": float("nan")}, (A, P, N), r"`temperature` must be > 0, got nan"),
        ({"temperature": True}, (A, P, N), r"`temperature` must be > 0, got True"),
        ({"normalization": 0.0}, (A, P, N), r"`normalization` \(the constant Z\) must be a finite number > 0, got 0.0"),
        ({"normalization": -2}, (A, P, N), r"`normalization` \(the constant Z\) must be a finite number > 0, got -2"),
        ({"normalization": float("inf")}, (A, P, N), r"`normalization` .* got inf"),
        ({"normalization": torch.tensor(float("nan"))}, (A, P, N), r"`normalization` .* got tensor\(nan\)"),
        ({"normalization": "1"}, (A, P, N), r"`normalization` .* got '1'"),
        ({"num_samples": 0}, (A, P, N), r"`num_samples` must be an integer ≥ 1 .*, got 0"),
        ({"num_samples": 4.0}, (A, P, N), r"`num_samples` must be an integer ≥ 1 .*, got 4.0"),
        ({"num_samples": True}, (A, P, N), r"`num_samples` must be an integer ≥ 1 .*, got True"),
        ({}, (torch.zeros(2, 3, dtype=torch.long), P, N), r"`anchor` must be a float tensor \[B, D\], got \(2, 3\)"),
        ({}, (A, P, torch.zeros(2, 3)), r"`negatives` must be a float tensor \[B, K, D\], got \(2, 3\)"),
        ({}, (A, torch.zeros(2, 4), N), r"`anchor` \(2, 3\), `positive` \(2, 4\) and `negatives` \(2, 4, 3\) must be"),
        ({}, (A, P, torch.zeros(3, 4, 3)), r"`negatives` \(3, 4, 3\) must be \[B, D\], \[B, D\] and \[B, K, D\]"),
        ({}, (A, P, torch.zeros(2, 0, 3)), r"`negatives` \(2, 0, 3\) must hold at least one negative"),
    ],
)
def test_bad_arguments_are_refused_in_one_sentence(change, inputs, message) -> None:
    with pytest.raises(ValueError, match=message):
        crd(*inputs, **{**GOOD, **change})


def test_normalization_refuses_bad_arguments_too() -> None:
    with pytest.raises(ValueError, match=r"`num_samples` must be an integer ≥ 1"):
        crd_normalization(A, P, N, num_samples=-3)
    with pytest.raises(ValueError, match=r"`temperature` must be > 0"):
        crd_normalization(A, P, N, num_samples=3, temperature=0.0)
