"""How much to trust a number of the report: bootstrap intervals over probe images, paired differences, verdicts.

Every metric of a run is a statistic of its probe images (a mean of per-image values, a standard deviation, a
ratio of counts, a distance correlation of the batch). A :data:`Statistic` takes a batch of resampled image
indices ``[B, n]`` and returns the statistic of each resample ``[B]``; :func:`bootstrap_replicates` draws the
indices (or half-samples of distinct images, for batch statistics) from a generator seeded by ``seed`` and ``n``
only, so two runs probed on the same images get the
*same* resamples — the difference of their replicates is the paired bootstrap of the difference. These
intervals answer "do these runs differ on such images?"; several runs are averaged by :func:`mean_over_units`.
Whether the *training procedure* changes a measure is a question about seeds: :func:`seed_interval` is the
t-interval over seed pairs' differences, which needs at least two pairs.

Intervals are expanded percentile intervals (Hesterberg 2015): the percentile interval at the tail level
``α' = 2·Φ(−√(n/(n−1))·t_{α/2, n−1})``, which removes the plain percentile interval's narrowness for small
``n`` (its coverage of a mean is close to nominal from about ten images on).

Example::

    >>> values = torch.arange(20, dtype=torch.float64)
    >>> replicates = bootstrap_replicates(mean_of(values), 20, resamples=2000, seed=0)
    >>> found = interval(float(values.mean()), replicates, images=20)
    >>> found.low < 9.5 < found.high
    True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor

__all__ = [
    "LEVEL",
    "RESAMPLES",
    "Interval",
    "Statistic",
    "bootstrap_p_value",
    "bootstrap_replicates",
    "holm",
    "images_needed",
    "interval",
    "mean_of",
    "mean_over_units",
    "seed_interval",
    "seed_p_value",
    "seed_pairs_needed",
    "sign_test",
    "t_quantile",
    "verdict",
]

RESAMPLES = 2000
LEVEL = 0.95
MAX_CHUNK = 2_000_000  # n² entries per call of a statistic (bounds the memory of [B, n, n] distance batches)

Statistic = Callable[[Tensor], Tensor]
"""Resampled image indices ``[B, n]`` (long) → the statistic of each resample ``[B]`` (float64; NaN when the
resample leaves it undefined, e.g. a ratio whose denominator is 0)."""


@dataclass(frozen=True)
class Interval:
    """An estimate with its ``level`` interval ``[low, high]`` over ``images`` probe images and ``resamples``
    bootstrap resamples (``defined`` of them gave a number); a seed-level interval (:func:`seed_interval`) counts
    seed pairs in ``images`` and has ``unit="seed pairs"`` and no resamples."""

    estimate: float
    low: float
    high: float
    level: float
    images: int
    resamples: int
    defined: int
    unit: str = "images"

    def direction(self) -> int:
        """+1 when the interval lies above 0, −1 below, 0 when it holds 0 (or is undefined)."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return 0
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer ≥ {minimum}, got {value!r}.")
    return value


def mean_of(values: Tensor) -> Statistic:
    """The mean of per-image ``values`` ``[n]`` (NaN entries are images without a value and are skipped)."""
    values = values.detach().double().cpu()
    return lambda indices: values[indices].nanmean(dim=-1)


def bootstrap_replicates(
    statistic: Statistic, images: int, *, resamples: int = RESAMPLES, seed: int = 0, half: bool = False
) -> Tensor:
    """``[resamples]`` values of ``statistic`` on resamples of ``images`` image indices drawn with replacement
    (``half=True``: half-samples, ``images // 2`` distinct images each).

    Half-samples are for batch statistics such as distance correlations: a bootstrap resample repeats images,
    and a repeated image is a perfectly matched pair that pulls a distance correlation up (on the demo, RS
    intervals that missed their own estimate); a half-sample repeats none, and for a statistic that is an
    average to first order its spread is the full sample's (a half-sample mean drawn without replacement has
    variance ``σ²/n · n/(n−1)``), so the percentile interval needs no rescaling. Near independence, where a
    distance correlation's spread shrinks faster than ``1/n``, the half-sample interval is wider: conservative.

    The indices depend only on ``images``, ``resamples``, ``seed`` and ``half``: runs probed on the same images
    share them, so the replicates of two such runs subtract into the paired bootstrap of their difference.
    """
    _check_count("images", images, 2 if half else 1)
    _check_count("resamples", resamples, 1)
    generator = torch.Generator().manual_seed(int(seed))
    if half:
        indices = torch.rand(resamples, images, generator=generator).argsort(dim=1)[:, : images // 2]
    else:
        indices = torch.randint(images, (resamples, images), generator=generator)
    chunk = max(1, MAX_CHUNK // max(images * images, 1))
    return torch.cat([statistic(indices[start : start + chunk]).double() for start in range(0, resamples, chunk)])


def mean_over_units(replicates: Sequence[Tensor]) -> Tensor:
    """The replicates of the mean over fixed units (runs, seed pairs): replicate ``r`` averages the units'
    replicates ``r``. The units are not resampled: the interval speaks about these runs on such images
    (methods §5.4); how much the seeds disagree is :func:`seed_interval`'s business."""
    if not replicates:
        raise ValueError("`replicates` is empty; expected the replicates of at least one run or seed pair.")
    return torch.stack([torch.as_tensor(r, dtype=torch.float64) for r in replicates]).mean(dim=0)


def _t_within(t: float, freedom: int) -> float:
    """``P(|T| ≤ t)`` for Student's t with an integer number of degrees of freedom, exactly (Abramowitz &
    Stegun 26.7.3–4: a finite series in ``θ = atan(t/√ν)``)."""
    theta = math.atan(abs(t) / math.sqrt(freedom))
    sine, cosine2 = math.sin(theta), math.cos(theta) ** 2
    if freedom % 2 == 0:
        term = total = 1.0
        for k in range(2, freedom - 1, 2):  # (1·3···(k−1))/(2·4···k) cos^k θ
            term *= (k - 1) / k * cosine2
            total += term
        return sine * total
    term = math.cos(theta)
    total = term if freedom > 1 else 0.0
    for k in range(3, freedom - 1, 2):  # (2·4···(k−1))/(1·3···k) cos^k θ
        term *= (k - 1) / k * cosine2
        total += term
    return 2 / math.pi * (theta + sine * total)


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, freedom: int) -> float:
    """Student's t quantile ``t_{p, ν}`` (methods §5.2): exact for ``ν ≤ 30`` (bisection on the exact
    distribution function), the Cornish–Fisher expansion above (Abramowitz & Stegun 26.7.5, error < 1e-5).

    Example::

        >>> round(t_quantile(0.975, 1), 3), round(t_quantile(0.975, 5), 3), round(t_quantile(0.975, 100), 3)
        (12.706, 2.571, 1.984)
    """
    if not 0 < p < 1:
        raise ValueError(f"`p` must be in (0, 1), got {p!r}.")
    _check_count("freedom", freedom, 1)
    if p < 0.5:
        return -t_quantile(1 - p, freedom)
    if freedom > 30:
        z, v = NormalDist().inv_cdf(p), float(freedom)
        return (
            z
            + (z**3 + z) / (4 * v)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
        )
    target, low, high = 2 * p - 1, 0.0, 1.0
    while _t_within(high, freedom) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_within(middle, freedom) < target else (low, middle)
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def interval(estimate: float, replicates: Tensor, *, images: int, level: float = LEVEL) -> Interval:
    """The expanded percentile interval (module docstring) of ``replicates`` around ``estimate``.

    Undefined replicates (NaN) are left out; with fewer than half of them defined the interval is NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    _check_count("images", images, 1)
    replicates = torch.as_tensor(replicates, dtype=torch.float64).flatten()
    defined = replicates[~replicates.isnan()]
    count = int(defined.numel())
    if count < max(1, replicates.numel() // 2) or not math.isfinite(estimate):
        return Interval(estimate, math.nan, math.nan, level, images, int(replicates.numel()), count)
    tail = (1 - level) / 2
    if images > 3:
        tail = NormalDist().cdf(-math.sqrt(images / (images - 1)) * t_quantile(1 - tail, images - 1))
    low, high = torch.quantile(defined, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(estimate, low, high, level, images, int(replicates.numel()), count)


def verdict(found: Interval, expected: int) -> str:
    """``"holds"`` when the interval of a difference excludes 0 in the ``expected`` direction (+1 / −1),
    ``"opposite"`` when it excludes 0 the other way, else ``"not distinguishable"``."""
    if expected not in (1, -1):
        raise ValueError(f"`expected` must be +1 or −1 (the predicted sign of the difference), got {expected!r}.")
    direction = found.direction()
    return "not distinguishable" if direction == 0 else "holds" if direction == expected else "opposite"


def images_needed(found: Interval, *, power: float = 0.8) -> int | None:
    """Images at which an interval of the same relative width would exclude 0 with probability ``power`` at the
    observed effect: ``n·((z_{1−α/2} + z_power)·se/|estimate|)²`` with ``se`` = half the interval's width over
    ``z_{1−α/2}`` (a normal approximation; ``None`` when the effect is 0 or the interval undefined)."""
    if not 0 < power < 1:
        raise ValueError(f"`power` must be in (0, 1), got {power!r}.")
    z_level = NormalDist().inv_cdf(1 - (1 - found.level) / 2)
    spread = found.high - found.low
    if not (math.isfinite(spread) and math.isfinite(found.estimate)) or found.estimate == 0 or spread <= 0:
        return None
    standard_error = spread / (2 * z_level)
    ratio = (z_level + NormalDist().inv_cdf(power)) * standard_error / abs(found.estimate)
    return max(1, math.ceil(found.images * ratio * ratio))


def sign_test(agreeing: int, pairs: int) -> float:
    """Two-sided exact sign test: the probability, if each pair were a fair coin, of a split at least as
    uneven as ``agreeing`` of ``pairs``."""
    _check_count("pairs", pairs, 1)
    if isinstance(agreeing, bool) or not isinstance(agreeing, int) or not 0 <= agreeing <= pairs:
        raise ValueError(f"`agreeing` must be an integer in [0, {pairs}], got {agreeing!r}.")
    extreme = max(agreeing, pairs - agreeing)
    tail = sum(math.comb(pairs, k) for k in range(extreme, pairs + 1)) / 2**pairs
    return min(1.0, 2 * tail)


def seed_interval(differences: Sequence[float], *, level: float = LEVEL) -> Interval:
    """The t-interval of the mean over seed pairs of their differences (distilled − baseline), methods §5.8:
    ``d̄ ± t_{1−α/2, k−1} · s/√k`` over ``k`` pairs, ``s`` their sample standard deviation. Its width comes
    from how much the seed pairs disagree, so it answers "does the training procedure change this measure?";
    it needs at least 2 pairs (one pair gives an undefined interval). Non-finite differences are left out.

    Example::

        >>> found = seed_interval([1.0, 2.0, 3.0])
        >>> round(found.low, 3), round(found.high, 3), found.images, found.unit
        (-0.484, 4.484, 3, 'seed pairs')
    """
    if not 0 < level < 1:
        raise ValueError(f"`level` must be in (0, 1), got {level!r}.")
    values = [float(d) for d in differences if math.isfinite(float(d))]
    count = len(values)
    estimate = math.fsum(values) / count if count else math.nan
    if count < 2:
        return Interval(estimate, math.nan, math.nan, level, count, 0, count, "seed pairs")
    spread = math.sqrt(math.fsum((v - estimate) ** 2 for v in values) / (count - 1))
    half = t_quantile(1 - (1 - level) / 2, count - 1) * spread / math.sqrt(count)
    return Interval(estimate, estimate - half, estimate + half, level, count, 0, count, "seed pairs")


def seed_pairs_needed(found: Interval, *, power: float = 0.8, most: int = 1000) -> int | None:
    """Seed pairs at which a :func:`seed_interval` would exclude 0 with probability about ``power`` at the
    observed mean difference and seed spread (methods §5.8): the least ``k ≥ 2`` with
    ``(t_{1−α/2, k−1} + t_{power, k−1}) · s/√k ≤ |d̄|``; ``None`` when the difference is 0, the spread unknown
    (fewer than 2 pairs) or more than ``most`` pairs would be needed."""
    if not 0 < power < 1:
        raise ValueError(f"`power` must be in (0, 1), got {power!r}.")
    pairs, alpha = found.images, 1 - found.level
    if pairs < 2 or not (math.isfinite(found.low) and math.isfinite(found.estimate)) or found.estimate == 0:
        return None
    spread = (found.high - found.low) / 2 * math.sqrt(pairs) / t_quantile(1 - alpha / 2, pairs - 1)
    for k in range(2, most + 1):
        needed = (t_quantile(1 - alpha / 2, k - 1) + t_quantile(power, k - 1)) * spread / math.sqrt(k)
        if needed <= abs(found.estimate):
            return k
    return None


def bootstrap_p_value(replicates: Tensor, *, images: int) -> float:
    """The two-sided p-value that matches :func:`interval` (methods §5.9): the least ``α`` at which the expanded
    percentile interval at level ``1 − α`` excludes 0. With ``q`` the smaller share of defined replicates on
    either side of 0 (``≤ 0`` or ``≥ 0``), the interval's tail level equals ``q`` at
    ``α = P(|T_{n−1}| > Φ⁻¹(1 − q) / sqrt(n/(n−1)))`` (``α = 2q`` for ``n ≤ 3``); a ``q`` of 0 is taken as half a
    replicate, so the least p-value is about ``1/resamples``. NaN when fewer than half the replicates are defined.

    Example::

        >>> round(bootstrap_p_value(torch.linspace(-1.0, 3.0, 2001), images=3), 3)
        0.5
    """
    _check_count("images", images, 1)
    replicates = torch.as_tensor(replicates, dtype=torch.float64).flatten()
    defined = replicates[~replicates.isnan()]
    count = int(defined.numel())
    if count == 0 or count < max(1, replicates.numel() // 2):
        return math.nan
    share = min(float((defined <= 0).double().mean()), float((defined >= 0).double().mean()))
    share = max(share, 0.5 / count)
    if share >= 0.5:
        return 1.0
    if images <= 3:
        return min(1.0, 2 * share)
    t = -NormalDist().inv_cdf(share) / math.sqrt(images / (images - 1))
    return min(1.0, max(0.0, 1 - _t_within(t, images - 1)))


def seed_p_value(differences: Sequence[float]) -> float:
    """The two-sided p-value of the one-sample t-test of the seed pairs' differences (methods §5.9), matching
    :func:`seed_interval`: its interval at level ``1 − α`` excludes 0 exactly when the p-value is below ``α``.
    NaN with fewer than two finite differences, and when they are all equal but not 0 (no spread to test: a
    measure that moves in whole images can give three equal differences); 1 when all are 0.

    Example::

        >>> round(seed_p_value([1.0, 2.0, 3.0]), 4)
        0.0742
    """
    values = [float(d) for d in differences if math.isfinite(float(d))]
    count = len(values)
    if count < 2:
        return math.nan
    mean = math.fsum(values) / count
    spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (count - 1))
    if spread == 0:
        return 1.0 if mean == 0 else math.nan
    return min(1.0, max(0.0, 1 - _t_within(mean / (spread / math.sqrt(count)), count - 1)))


def holm(p_values: Sequence[float], *, alpha: float = 1 - LEVEL) -> list[bool]:
    """Holm's step-down procedure (methods §5.9): which of the ``m`` hypotheses are rejected so that the chance
    of rejecting any true one is at most ``alpha`` (family-wise), whatever their dependence. The p-values in
    increasing order are compared with ``alpha/m, alpha/(m−1), …`` until the first that exceeds its bound; a NaN
    p-value is never rejected and still counts in ``m``.

    Example::

        >>> holm([0.01, 0.04, 0.03, 0.5])
        [True, False, False, False]
    """
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha!r}.")
    count = len(p_values)
    order = sorted(range(count), key=lambda i: (math.isnan(p_values[i]), p_values[i]))
    rejected = [False] * count
    for rank, index in enumerate(order):
        p = p_values[index]
        if math.isnan(p) or p > alpha / (count - rank):
            break
        rejected[index] = True
    return rejected
