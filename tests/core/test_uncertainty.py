import math

import pytest
import torch

from kd_probe.core.uncertainty import (
    Interval,
    bootstrap_replicates,
    combine_units,
    images_needed,
    interval,
    mean_of,
    sign_test,
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


def test_combine_units_resamples_the_units() -> None:
    one = torch.linspace(0, 1, 500, dtype=torch.float64)
    assert torch.equal(combine_units([one]), one)
    units = [torch.full((4000,), float(k), dtype=torch.float64) for k in range(4)]
    combined = combine_units(units, seed=0)
    assert combined.min() >= 0 and combined.max() <= 3 and combined.std() > 0.3  # units drawn with replacement
    assert abs(float(combined.mean()) - 1.5) < 0.05


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
        (lambda: combine_units([]), "`replicates` is empty"),
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
