from pathlib import Path

import pytest

from kd_probe.report import ReportError, RunSummary, verdicts


def _run(role: str, seed: int, **metrics: float) -> RunSummary:
    values = {"n_fg": 1.0, "fg_ratio": 0.5, "d_mean": 1.0, "d_std": 1.0, "rho": 0.5}
    values.update(metrics)
    return RunSummary(Path("."), f"{role}-s{seed}", role, seed, values, {})


def test_verdicts_state_direction_size_and_seed_agreement() -> None:
    distilled = [
        _run("distilled", 0, n_fg=3.0, fg_ratio=0.7, d_mean=0.5, d_std=0.2, rho=0.4),
        _run("distilled", 1, n_fg=2.0, fg_ratio=0.6, d_mean=2.0, d_std=0.4, rho=0.3),
    ]
    baseline = [_run("baseline", 0), _run("baseline", 1)]
    h1, h2, h3 = verdicts(distilled, baseline)
    assert "**holds**" in h1 and "N_fg 2.5 vs 1 (+1.5, +150%)" in h1 and "2/2 seed pairs" in h1
    assert "**mixed**" in h2 and "D_mean 1.25 vs 1 (+0.25, +25%)" in h2 and "D_std 0.3 vs 1 (-0.7, -70%)" in h2
    assert "1/2 seed pairs" in h2  # the weaker of the two metrics: D_mean is lower for seed 0 only
    assert "**does not hold (the opposite direction)**" in h3 and "0/2 seed pairs" in h3


def test_equal_values_are_undetermined() -> None:
    (h1, h2, h3) = verdicts([_run("distilled", 0)], [_run("baseline", 0)])
    assert all("undetermined" in line for line in (h1, h2, h3))


def test_verdicts_refuse_two_runs_with_the_same_role_and_seed() -> None:
    first, second = _run("baseline", 0), _run("baseline", 0)
    first.path, second.path = Path("e/baseline"), Path("other/baseline")
    with pytest.raises(ReportError) as error:
        verdicts([_run("distilled", 0)], [first, second])
    assert str(error.value) == (
        "two baseline runs have seed 0, e/baseline and other/baseline; each seed pairs one distilled with one "
        "baseline run, so report them separately."
    )
