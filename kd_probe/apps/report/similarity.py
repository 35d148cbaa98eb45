"""The report's representation similarity (methods §7): linear CKA of the matched layer pairs and the
class-correlation gap, distilled vs baseline, from each run's ``SimilarityProbe`` file; and ``similarity.png``,
the two groups' CKA matrices side by side.

CKA is a statistic of the whole probe set, like the distance correlations of the UniCAM section: its intervals
resample the probe items as half-samples of distinct items (the unbiased HSIC is undefined with an item drawn
twice; :func:`~kd_probe.core.uncertainty.bootstrap_replicates`), from the features and logits the probe kept at
its last probe; without them (features too large to keep) the table shows the values without intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kd_probe.apps.report.sections import (
    COLUMNS,
    Evidence,
    comparison_line,
    comparison_rows,
    digest_line,
    not_probed,
    section,
)
from kd_probe.apps.report.stats import Measure
from kd_probe.core.similarity import MinibatchCKA, class_correlation_gap
from kd_probe.io.run_files import SIMILARITY_FILE, RunFileError, check_version, exists, member, read_pt
from kd_probe.io.runs import RunSummary

__all__ = ["read_similarity", "similarity_figure", "similarity_measures", "similarity_section"]


def read_similarity(folder: Path) -> dict[str, Any] | None:
    """The run's ``SimilarityProbe`` file (read weights-only, its version checked), or ``None`` without one."""
    path = member(folder, SIMILARITY_FILE, SIMILARITY_FILE)
    if not exists(path):
        return None
    record = read_pt(path)
    check_version(path, record, SIMILARITY_FILE)
    if not isinstance(record.get("entries"), list) or not isinstance(record.get("pairs"), list):
        raise RunFileError(path, "has no 'entries' and 'pairs' lists.")
    return record


def similarity_measures(record: dict[str, Any]) -> dict[str, Measure]:
    """CKA of each matched pair (``cka/<student layer>``) and the class-correlation gap (``class_gap``) at the
    probe's last successful probe, with statistics over resampled items when the probe kept them."""
    entries = [e for e in record["entries"] if isinstance(e, dict) and e.get("failed") is None and "cka_mean" in e]
    if not entries:
        return {}
    last = entries[-1]
    measures = {k: Measure(float(v)) for k, v in last.items() if k.startswith("cka/") or k == "class_gap"}
    items = record.get("items")
    if not isinstance(items, dict) or items.get("epoch") != last.get("epoch"):
        return measures
    for layer, (x, y) in items.get("pairs", {}).items():
        if f"cka/{layer}" in measures:
            measures[f"cka/{layer}"] = _resampled(measures[f"cka/{layer}"], _cka(x, y), x, ("cka", layer))
    logits = items.get("logits", {})
    if "class_gap" in measures and {"student", "teacher"} <= set(logits):
        statistic = _gap(logits["teacher"], logits["student"])
        measures["class_gap"] = _resampled(measures["class_gap"], statistic, logits["student"], ("class_gap",))
    return measures


def _resampled(measure: Measure, statistic: Callable[[Tensor], Tensor], rows: Tensor, what: tuple) -> Measure:
    """``measure`` with a statistic over half-samples of its ``rows`` items; runs probed on the same items (the
    same count and probe set) share the resamples."""
    return Measure(measure.estimate, statistic, rows.shape[0], (*what, rows.shape[0]), half=True)


def _cka(x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """Linear CKA with the unbiased HSIC (one batch of minibatch CKA, methods §7.2) on resampled items."""

    def statistic(indices: Tensor) -> Tensor:
        values = []
        for rows in indices:
            accumulator = MinibatchCKA()
            accumulator.update([x[rows].double()], [y[rows].double()])
            values.append(accumulator.compute()[0, 0])
        return torch.stack(values)

    return statistic


def _gap(teacher: Tensor, student: Tensor) -> Callable[[Tensor], Tensor]:
    """Mean ``|corr_T − corr_S|`` off the diagonal (methods §7.4) on resampled items."""

    def statistic(indices: Tensor) -> Tensor:
        values = []
        for rows in indices:
            gap = class_correlation_gap(teacher[rows].double(), student[rows].double())
            values.append(gap[~torch.eye(gap.shape[0], dtype=torch.bool)].abs().nanmean())
        return torch.stack(values)

    return statistic


def _records(runs: list[RunSummary]) -> list[dict[str, Any] | None]:
    return [read_similarity(run.path) for run in runs]


def similarity_section(evidence: Evidence, digest: list[str] | None = None) -> list[str]:
    """CKA per matched pair and the class-correlation gap, distilled vs baseline with intervals; nothing when no
    run has a ``SimilarityProbe`` file, one sentence when some runs have none (naming them) or the runs' probes
    were set up differently. ``digest``: gets one plain line (CKA at the deepest pair, or why not compared)."""
    runs = [*evidence.distilled, *evidence.baseline]
    records = _records(runs)
    present = [record for record in records if record is not None]
    if not present:
        return []
    title = "How alike the student's representations are to the teacher's (CKA, last probe)"
    measures = [similarity_measures(record) if record is not None else {} for record in records]
    split = len(evidence.distilled)
    groups = (measures[:split], measures[split:])
    pairs = [(student, teacher) for student, teacher in present[0]["pairs"]]
    metrics = [(f"cka/{s}", f"CKA {s} ~ teacher {t}") for s, t in pairs] + [("class_gap", "class-correlation gap")]
    partial = not_probed(
        title, evidence, groups, ("a SimilarityProbe", "their representations with the teacher's", metrics)
    )
    settings = {repr({k: v for k, v in r.get("settings", {}).items() if k != "networks"}) for r in present}
    if partial is None and len(settings) > 1:
        partial = [f"## {title}", "", "- not compared: the runs' similarity probes were set up differently.", ""]
    line = comparison_line(evidence, groups, *metrics[len(pairs) - 1]) if pairs and partial is None else None
    digest_line(digest, "representation similarity", partial, line)
    if partial is not None:
        return partial
    rows = comparison_rows(evidence, groups, metrics)
    lines = section(title, ["measure", *COLUMNS[1:]], rows)
    features = present[0].get("features", "pooled")
    lines += [
        f"Linear CKA of {features} features with the unbiased HSIC (1 = the same representation up to a rotation and "
        "a scale; methods §7); class-correlation gap = mean |corr_T − corr_S| of the class logits' correlations "
        "(smaller: the student relates its classes as the teacher does; methods §7.4). CKA is a statistic of the "
        "whole probe set: intervals resample half-samples of distinct probe items (the unbiased HSIC is undefined "
        "with repeated items), as for the distance correlations above.",
        "",
    ]
    return lines


def similarity_figure(runs: list[RunSummary], path: Path) -> Path | None:
    """``similarity.png``: the mean CKA matrix (teacher layers × student layers) of the distilled runs and of the
    baseline runs side by side, at their last probes; ``None`` when no run has a similarity file."""
    groups: dict[str, list[Tensor]] = {}
    names: tuple[list[str], list[str]] | None = None
    for run, record in zip(runs, _records(runs), strict=True):
        entries = [e for e in (record or {}).get("entries", []) if e.get("failed") is None and "cka" in e]
        if record is None or not entries:
            continue
        groups.setdefault(run.role, []).append(entries[-1]["cka"].double())
        names = names or (record["student_layers"], record["teacher_layers"])
    if names is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = [role for role in ("distilled", "baseline") if role in groups]
    figure, axes = plt.subplots(1, len(roles), figsize=(4.2 * len(roles), 3.6), squeeze=False)
    for axis, role in zip(axes[0], roles, strict=True):
        matrix = torch.stack(groups[role]).mean(dim=0).T.numpy()  # rows: teacher layers
        image = axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
        axis.set_xticks(range(len(names[0])), names[0], rotation=45, ha="right", fontsize=7)
        axis.set_yticks(range(len(names[1])), names[1], fontsize=7)
        axis.set_xlabel("student layer")
        axis.set_ylabel("teacher layer")
        runs_note = f"{len(groups[role])} run{'s' if len(groups[role]) > 1 else ''}"
        axis.set_title(f"{role} ({runs_note}): CKA", fontsize=9)
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                axis.text(column, row, f"{matrix[row, column]:.2f}", ha="center", va="center", fontsize=7, color="w")
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
