"""``kd-probe report``'s threshold sweep: does H1 depend on the threshold ``b``? N_fg and fg_ratio recounted from
each run's saved entropy maps at its last checkpoint, for several ``b`` (methods §1.3)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from kd_probe.core.knowledge_points import count_knowledge_points
from kd_probe.io.runs import RunSummary

__all__ = ["SWEEP", "mean_std", "sweep_section", "threshold_sweep"]

SWEEP = (0.1, 0.2, 0.3, 0.5)


def _sign(value: float) -> int:
    return 0 if not math.isfinite(value) or value == 0 else (1 if value > 0 else -1)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation of the finite values (NaN, NaN without one)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.pstdev(finite) if len(finite) > 1 else 0.0


def threshold_sweep(runs: list[RunSummary], thresholds: Sequence[float] = SWEEP) -> list[dict[str, float]]:
    """N_fg and fg_ratio at each run's last checkpoint, recounted from the saved entropy maps for each ``b``."""
    rows = []
    for b in thresholds:
        row: dict[str, float] = {"threshold": b}
        for role in ("distilled", "baseline"):
            n_fg, ratio = [], []
            for run in (r for r in runs if r.role == role):
                entries = [e for e in run.history["entries"] if e.get("failed") is None and "entropy" in e]
                if not entries:
                    continue
                baseline = run.history["settings"].get("baseline", "dataset")
                points = count_knowledge_points(
                    entries[-1]["entropy"],
                    run.history["masks"],
                    threshold=b,
                    baseline=baseline,
                    effective=entries[-1]["effective"],
                )
                n_fg.append(float(points.n_fg[points.effective].float().mean()))
                ratio.append(points.fg_ratio)
            row[f"{role}_n_fg"], row[f"{role}_fg_ratio"] = mean_std(n_fg)[0], mean_std(ratio)[0]
        rows.append(row)
    return rows


def sweep_section(runs: list[RunSummary]) -> list[str]:
    lines = [
        "",
        "## Does H1 depend on the threshold b?",
        "",
        "| b (nats) | N_fg distilled | N_fg baseline | fg_ratio distilled | fg_ratio baseline | H1 direction |",
        "|---|---|---|---|---|---|",
    ]
    for row in threshold_sweep(runs):
        signs = {
            _sign(row["distilled_n_fg"] - row["baseline_n_fg"]),
            _sign(row["distilled_fg_ratio"] - row["baseline_fg_ratio"]),
        }
        names = {frozenset({1}): "as predicted", frozenset({-1}): "opposite", frozenset({0}): "no difference"}
        direction = names.get(frozenset(signs), "mixed")
        lines.append(
            f"| {row['threshold']} | {row['distilled_n_fg']:.3g} | {row['baseline_n_fg']:.3g} | "
            f"{row['distilled_fg_ratio']:.3g} | {row['baseline_fg_ratio']:.3g} | {direction} |"
        )
    return lines
