"""Warnings above the report's verdicts: runs whose knowledge points can say little about distillation.

- a run whose test accuracy lies within :data:`CHANCE_MARGIN` of chance (``1 / classes``: the ``num_classes`` of its
  ``kd_probe_run.json``, else the distinct labels of its AgreementProbe file; neither: no check);
- a run with no knowledge point, or a foreground ratio below :data:`FG_RATIO_FLOOR`, at its last checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kd_probe.apps.report.stats import Measure
from kd_probe.io.runs import RunSummary

__all__ = ["CHANCE_MARGIN", "FG_RATIO_FLOOR", "classes_of", "health_warnings"]

CHANCE_MARGIN = 0.05  # 5 percentage points of test accuracy
FG_RATIO_FLOOR = 0.02


def classes_of(run: RunSummary) -> int | None:
    """The number of classes of the run's task: recorded in its run file, else the distinct labels of its
    AgreementProbe's probe images, else ``None``."""
    if run.num_classes is not None:
        return run.num_classes
    labels = run.agreement.get("labels") if run.agreement else None
    return int(labels.unique().numel()) if isinstance(labels, torch.Tensor) and labels.numel() else None


def health_warnings(runs: Sequence[RunSummary], measures: Sequence[dict[str, Measure]]) -> list[str]:
    """Plain sentences (no markup) warning of near-chance runs and of runs without foreground knowledge points;
    ``measures``: each run's knowledge-point measures on all probe images (empty when it has none)."""
    found = []
    near = []  # (run, its classes, its accuracy) of each near-chance run
    for run in runs:
        classes, accuracy = classes_of(run), run.metrics.get("accuracy", math.nan)
        if classes is not None and classes >= 2 and math.isfinite(accuracy) and accuracy < 1 / classes + CHANCE_MARGIN:
            near.append((run, classes, accuracy))
    if near:
        same = len({classes for _, classes, _ in near}) == 1
        names = [f"{r.name} ({a:.1%}{'' if same else f'; chance {1 / c:.1%}'})" for r, c, a in near]
        chance = f" ({1 / near[0][1]:.1%} with {near[0][1]} classes)" if same else ""
        found.append(
            f"{_listed(names)} {'are' if len(near) > 1 else 'is'} within {CHANCE_MARGIN * 100:.0f} points of chance"
            f"{chance}: the knowledge points of a near-chance network say little about distillation; train longer, "
            "or on more data, before reading the verdicts."
        )
    empty = []
    for run, own in zip(runs, measures, strict=True):
        if "n_fg" not in own:
            continue
        if own["n_fg"].estimate + own["n_bg"].estimate == 0:
            empty.append(f"{run.name} has no knowledge point")
        elif own["fg_ratio"].estimate < FG_RATIO_FLOOR:
            empty.append(f"{run.name} has fg_ratio {own['fg_ratio'].estimate:.3g} (< {FG_RATIO_FLOOR})")
    if empty:
        found.append(
            f"{_listed(empty)} at the last checkpoint, so the hypotheses, which count foreground knowledge points, "
            "have little to compare; check the probed `layer` (the paper probes a convolution's pre-ReLU output), "
            "λ (`lam`, the weight of the σ maps' entropy term), the `threshold` b (the entropy drop that makes a "
            "knowledge point), or train longer."
        )
    return found


def _listed(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
