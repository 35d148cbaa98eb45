import math

import pytest
import torch

from kd_probe.core.uncertainty import (
    Interval,
    bootstrap_replicates,
    images_needed,
    interval,
    mean_of,
    mean_over_units,
    seed_interval,
    seed_pairs_needed,
    sign_test,
    t_quantile,
    verdict,
)


def _interval_of_mean(values: torch.Tensor, seed: int = 0, resamples: int = 1000) -> Interval:
    replicates = bootstrap_replicates(mean_of(values), values.numel(), resamples=resamples, seed=seed)
    return interval(float(values.mean()), replicates, images=values.numel())


def test_intervals_cover_the_true_mean_at_the_stated_level() -> None:
    generator = torch.Generator().manual_seed(0)
    covered = 0
    for trial in range(400):
        values = 2.0 + 3.0 * torch.randn(20, generator=generator, dtype=torch.float64)
        found = _interval_of_mean(values, seed=trial)
        covered += found.low <= 2.0 <= found.high
    assert covered / 400 >= 0.93


def test_the_verdict_flips_from_not_distinguishable_to_holds_as_the_sample_grows() -> None:
    generator = torch.Generator().manual_seed(1)
    differences = 0.3 + torch.randn(400, generator=generator, dtype=torch.float64)  # a true effect of +0.3
    small, large = _interval_of_mean(differences[:10]), _interval_of_mean(differences)
    assert verdict(small, 1) == "not distinguishable" and verdict(large, 1) == "holds"
    assert verdict(large, -1) == "opposite"
    needed = images_needed(small)
    assert needed is not None and needed > 10  # more images than it had


def test_runs_on_the_same_images_share_resamples_so_differences_are_paired() -> None:
    a = torch.arange(30, dtype=torch.float64)
    b = a + 1.0  # every image exactly one higher: the paired difference has no spread at all
    difference = bootstrap_replicates(mean_of(b), 30, seed=3) - bootstrap_replicates(mean_of(a), 30, seed=3)
    assert torch.allclose(difference, torch.ones(2000, dtype=torch.float64), rtol=0, atol=1e-12)
    found = interval(1.0, difference, images=30)
    assert abs(found.low - 1) < 1e-12 and abs(found.high - 1) < 1e-12 and verdict(found, 1) == "holds"


def test_images_needed_is_the_normal_power_formula() -> None:
    # se = width / (2 · 1.96) = 1; n · ((1.96 + 0.8416) · se / effect)² = 100 · 7.849…
    found = Interval(1.0, 1.0 - 1.959964, 1.0 + 1.959964, 0.95, 100, 2000, 2000)
    assert images_needed(found) == 785
    assert images_needed(Interval(0.0, -1.0, 1.0, 0.95, 100, 2000, 2000)) is None


def test_sign_test_known_values() -> None:
    assert sign_test(3, 3) == 0.25 and sign_test(0, 3) == 0.25
    assert sign_test(5, 5) == 0.0625 and sign_test(2, 4) == 1.0
    assert math.isclose(sign_test(9, 10), 22 / 1024)


def test_mean_over_units_keeps_the_units_fixed() -> None:
    one = torch.linspace(0, 1, 500, dtype=torch.float64)
    assert torch.equal(mean_over_units([one]), one)
    units = [torch.full((4000,), float(k), dtype=torch.float64) for k in range(4)]
    assert torch.equal(mean_over_units(units), torch.full((4000,), 1.5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("p", "freedom", "expected"),
    [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 3, 3.1824), (0.975, 5, 2.5706), (0.975, 10, 2.2281),
     (0.975, 30, 2.0423), (0.975, 60, 2.0003), (0.8, 1, 1.3764), (0.8, 4, 0.9410), (0.9875, 2, 6.2053),
     (0.025, 3, -3.1824)],
)  # fmt: skip
def test_t_quantiles_equal_the_tables(p: float, freedom: int, expected: float) -> None:
    assert t_quantile(p, freedom) == pytest.approx(expected, abs=1e-4)


def test_seed_interval_is_the_t_interval_over_seed_pairs() -> None:
    found = seed_interval([0.5, 1.5])  # mean 1, s = 0.7071, t_{.975,1} = 12.706
    assert found.estimate == 1.0 and found.unit == "seed pairs" and found.images == 2
    assert found.high - 1.0 == pytest.approx(12.7062 * 0.70711 / math.sqrt(2), rel=1e-4)
    one = seed_interval([0.8])
    assert one.estimate == 0.8 and math.isnan(one.low) and one.direction() == 0 and seed_pairs_needed(one) is None
    assert seed_interval([1.0, math.nan, 2.0, 3.0]).images == 3  # non-finite pairs left out
    assert seed_pairs_needed(seed_interval([1.0, 2.0, 3.0])) == 5
    assert seed_pairs_needed(seed_interval([-1.0, 1.0])) is None  # no observed difference


def _null_seed_pairs(pairs: int, generator: torch.Generator, effect: float = 0.0) -> list[float]:
    """Seed pairs' differences of a run-level mean over 40 probe images, when each run has a seed-level random
    effect (sd 1) on top of image noise (sd 2): the [KP] demo's situation, with a planted procedure effect."""
    images = 40
    per_image = torch.randn(2 * pairs, images, generator=generator, dtype=torch.float64) * 2
    seeds = torch.randn(2 * pairs, 1, generator=generator, dtype=torch.float64)
    runs = (per_image + seeds).mean(dim=1)
    return (runs[:pairs] - runs[pairs:] + effect).tolist()


@pytest.mark.parametrize("pairs", [1, 2, 3, 6])
def test_seed_intervals_claim_a_null_difference_at_most_at_the_nominal_rate(pairs: int) -> None:
    generator = torch.Generator().manual_seed(pairs)
    trials = 2000
    claims = sum(seed_interval(_null_seed_pairs(pairs, generator)).direction() != 0 for _ in range(trials))
    monte_carlo = 3 * math.sqrt(0.05 * 0.95 / trials)
    assert claims / trials <= 0.05 + monte_carlo
    if pairs == 1:
        assert claims == 0  # one pair never gives a verdict


def test_an_interval_with_mostly_undefined_resamples_is_undefined() -> None:
    replicates = torch.tensor([math.nan] * 60 + [1.0] * 40, dtype=torch.float64)
    found = interval(1.0, replicates, images=10)
    assert math.isnan(found.low) and found.defined == 40 and verdict(found, 1) == "not distinguishable"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_replicates(mean_of(torch.ones(3)), 0), "`images` must be an integer ≥ 1, got 0."),
        (
            lambda: bootstrap_replicates(mean_of(torch.ones(3)), 3, resamples=0),
            "`resamples` must be an integer ≥ 1, got 0.",
        ),
        (lambda: interval(0.0, torch.zeros(5), images=5, level=1.5), "`level` must be in (0, 1), got 1.5."),
        (lambda: verdict(Interval(0, 0, 0, 0.95, 1, 1, 1), 0), "`expected` must be +1 or −1"),
        (lambda: sign_test(4, 3), "`agreeing` must be an integer in [0, 3], got 4."),
        (lambda: mean_over_units([]), "`replicates` is empty"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_half_samples_keep_a_distance_correlation_interval_honest_where_the_bootstrap_is_not() -> None:
    from kd_probe.core.distance_correlation import correlation_of_distances, distance_matrix

    generator = torch.Generator().manual_seed(0)
    covered = {True: 0, False: 0}
    for trial in range(30):  # independent features: the true R* is 0
        x = torch.randn(24, 5, generator=generator, dtype=torch.float64)
        y = torch.randn(24, 3, generator=generator, dtype=torch.float64)
        a, b = distance_matrix(x), distance_matrix(y)

        def statistic(i: torch.Tensor, a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
            return correlation_of_distances(a[i[:, :, None], i[:, None, :]], b[i[:, :, None], i[:, None, :]])

        estimate = float(correlation_of_distances(a, b))
        for half in (True, False):
            found = interval(
                estimate, bootstrap_replicates(statistic, 24, resamples=100, seed=trial, half=half), images=24
            )
            covered[half] += found.low <= 0 <= found.high
    assert covered[True] >= 27  # half-samples: no repeated image, the interval covers the truth
    assert covered[False] <= 10  # with replacement, repeated images are matched pairs that pull R* up


def test_half_samples_draw_distinct_images() -> None:
    seen: list[torch.Tensor] = []

    def statistic(indices: torch.Tensor) -> torch.Tensor:
        seen.append(indices)
        return indices.double().mean(dim=-1)

    bootstrap_replicates(statistic, 10, resamples=50, seed=0, half=True)
    indices = torch.cat(seen)
    assert indices.shape == (50, 5) and all(row.unique().numel() == 5 for row in indices)
