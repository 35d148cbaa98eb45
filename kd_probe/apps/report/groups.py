"""Which runs ``kd-probe report`` may pair image by image, and the group-summary report (``--group-summaries``)
for runs that may not be paired: each group's mean and spread over its runs, no paired intervals, no verdicts."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from kd_probe.apps.report.sections import Evidence, format_value, section
from kd_probe.io.runs import METRICS, OPTIONAL_PROBES, RunSummary

__all__ = [
    "ReportError",
    "check_comparable",
    "check_one_run_per_seed",
    "group_summary_lines",
    "weight_path_difference",
]

NEVER_TOGETHER = ("protocols",)  # differences no option allows: a report never averages two protocols together


class ReportError(ValueError):
    """The report as a whole is refused (no usable run, mixed protocols, two runs for one seed)."""


def check_comparable(runs: Sequence[RunSummary], group_summaries: bool = False) -> list[str]:
    """What the runs differ in (``"probed layers (…: run-a; …: run-b)"``), from
    :attr:`RunSummary.comparison_keys`; a probe a run did not have is compared among the runs that had it.

    Raises:
        ReportError: they differ in a protocol, or in anything else without ``group_summaries``: one sentence
            naming what differs and which runs have which value.
    """
    keys = [run.comparison_keys for run in runs]
    differing = []
    for what in dict.fromkeys(key for run_keys in keys for key in run_keys):
        groups: dict[str, list[str]] = {}
        for run, run_keys in zip(runs, keys, strict=True):
            if what in run_keys or not what.startswith(OPTIONAL_PROBES):
                groups.setdefault(run_keys.get(what, "not recorded"), []).append(str(run.path))
        if len(groups) < 2:
            continue
        named = f"{what} ({'; '.join(value + ': ' + ', '.join(paths) for value, paths in groups.items())})"
        if what in NEVER_TOGETHER:
            raise ReportError(
                f"the runs have different {named} and are never averaged together; report each group's runs on "
                "their own."
            )
        if not group_summaries:
            raise ReportError(
                f"the runs have different {named}, so they cannot be compared image by image; report each group's "
                "runs on their own, or pass --group-summaries to compare only the groups' summaries (no paired "
                "intervals, no verdicts)."
            )
        differing.append(named)
    return differing


def check_one_run_per_seed(runs: Sequence[RunSummary]) -> None:
    """A ``ReportError`` naming both folders when two runs of one group (the baseline, or one KD method's
    distilled runs) have the same seed."""
    seen: dict[tuple[str, str, int], RunSummary] = {}
    for run in runs:
        other = seen.setdefault((run.role, run.group, run.seed), run)
        if other is not run:
            what = f"{run.role} runs" if run.group == run.role else f"{run.role} runs of KD method {run.group}"
            raise ReportError(
                f"two {what} have seed {run.seed}, {other.path} and {run.path}; each seed pairs one "
                "distilled with one baseline run, so report them separately."
            )


def group_summary_lines(evidence: Evidence, views: dict, differing: list[str]) -> list[str]:
    """The report's comparison without pairing: per metric, each group's mean ± standard deviation over its runs
    (a run's value: its estimate on all its probe images) and the difference of the means, with no interval."""
    why = (
        f"the runs differ in {'; '.join(differing)}, so they are not paired image by image"
        if differing
        else "as asked, although the runs could be paired"
    )
    lines = [
        f"**Group summaries only** (`--group-summaries`): {why}. Each group shows the mean ± standard deviation "
        "of its runs' values and the difference of the means, without intervals on differences and without "
        "verdicts on the paper's hypotheses; the per-run intervals in the Runs table stand.",
        "",
    ]
    measured = [*views["all"][0], *views["all"][1]]
    runs = [*evidence.distilled, *evidence.baseline]
    split = len(evidence.distilled)
    rows = []
    for key, label in METRICS:
        values = [
            own[key].estimate if key in own else run.metrics.get(key, math.nan)
            for run, own in zip(runs, measured, strict=True)
        ]
        groups = [_finite(values[:split]), _finite(values[split:])]
        cells = [_mean_and_spread(key, group) for group in groups]
        both = all(groups)
        difference = statistics.fmean(groups[0]) - statistics.fmean(groups[1]) if both else math.nan
        if key == "accuracy":
            shown = f"{difference * 100:+.1f} points" if math.isfinite(difference) else "–"
        else:
            shown = format_value(key, difference)
            shown = shown if shown == "–" or shown.startswith("-") else f"+{shown}"
        rows.append([label, *cells, shown])
    title = "Distilled vs baseline: group summaries (all probe images; no pairing)"
    return [*lines, *section(title, ["metric", "distilled", "baseline", "difference of means"], rows)]


def _finite(values: list[float]) -> list[float]:
    return [value for value in values if math.isfinite(value)]


def _mean_and_spread(key: str, values: list[float]) -> str:
    if not values:
        return "–"
    mean = format_value(key, statistics.fmean(values))
    if len(values) == 1:
        return f"{mean} (1 run)"
    return f"{mean} ± {format_value(key, statistics.pstdev(values))} ({len(values)} runs)"


def weight_path_difference(runs: Sequence[RunSummary]) -> str | None:
    """``None`` when every run's D is summed alike, else the sentence that says which runs sum it over every
    optimizer step and which over their saved checkpoints (probed offline: the straight segments between them,
    shorter; methods §1.4), so that D_mean and D_std are not compared across them."""
    kinds: dict[str, list[str]] = {}
    for run in runs:
        kinds.setdefault(run.weight_path, []).append(run.name)
    if len(kinds) < 2:
        return None
    named = " and ".join(f"over {kind} in {', '.join(names)}" for kind, names in kinds.items())
    return (
        f"D is summed {named} (methods §1.4), so D_mean and D_std are not compared; probe every run the same way "
        "(all live, or all from checkpoints of the same epochs) to compare them."
    )
