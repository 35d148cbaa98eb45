"""``kd-probe report RUN_DIR...``: does distillation change what the student learns? (the [KP] hypotheses)

Reads each run's ``kd_probe_summary.json``, ``kd_probe_history.pt``, ``kd_probe_run.json`` (written by the
demo; otherwise the test accuracy is read from the TensorBoard event files with TensorBoard's own reader) and,
when present, the agreement and UniCAM probes' files, and writes ``report.md``. Every per-run number comes with
a 95 % bootstrap interval over the probe images (seeded, ``--resamples`` resamples). Every distilled −
baseline difference is answered twice (methods §5.5): whether *these runs* differ (a paired interval: the same
images and resamples, the seed pairs fixed; words "differ as predicted" / "differ the other way") and, from two
seed pairs on, whether *distillation* changes the measure (a t-interval over the seed pairs' differences,
methods §5.8; a hypothesis "holds" or is "opposite" only when it excludes 0 in that direction, else "not
distinguishable from no difference at this sample size" with the seed pairs it would need). One seed pair
gets no verdict about distillation (:mod:`kd_probe.apps.report.verdicts`). The knowledge-point metrics are reported on all
probe images and on the reference code's effective images (methods §1.3), intersected over the runs, as the
[KP] authors compared networks. Above the verdicts, a warning names any run near chance or without foreground
knowledge points (:mod:`kd_probe.apps.report.health`); a probe that only some runs had gets one sentence naming
the others instead of a comparison. Also: a threshold sweep recomputed from the saved entropy maps and, with
matplotlib, PNG figures. A :class:`~kd_probe.apps.report.digest.Digest` passed in gets the report's short form
for a console (``kd-probe demo`` prints it).

Files are data, never code: ``.pt`` files load with ``torch.load(..., weights_only=True)`` only (tensors and
plain containers; a file that holds anything else is refused, not run), and a path read from a file (the
summary's ``history_file``) is followed only while it stays inside the run's folder. A run with a missing,
damaged, truncated, hostile or malformed file is left out: one line on stderr names the file and what is
wrong, and report.md lists it under "Left out"; with no usable run left the command exits with status 2.

Protocols are never averaged together: the runs of one report must share the ``protocol`` of their
``kd_probe_run.json`` ("hinton" or "paper"; runs without that file count as "not recorded"), else the report
is refused with a sentence naming which runs have which protocol — report each protocol's runs on their
own. Runs are paired image by image only when they were probed alike: the same probe set (a fingerprint of
its tensors), layers, σ method and settings, for the knowledge-point probe and, where the runs have them, the
agreement and UniCAM probes; otherwise the report is refused, naming what differs, unless ``--group-summaries``
asks for each group's summaries over its runs only (no paired intervals, no verdicts; the report says so).
Seeds pair a distilled with a baseline run, so two runs with the same role and seed are refused too, naming
both folders. report.md and the figures are written atomically (a temporary file in the same
folder, then ``os.replace``): a reader never sees half a report.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from kd_probe.apps.options import Parser
from kd_probe.apps.options import add_report_arguments as add_arguments
from kd_probe.apps.report.digest import Digest
from kd_probe.apps.report.groups import ReportError, check_comparable, check_one_run_per_seed, group_summary_lines
from kd_probe.apps.report.health import health_warnings
from kd_probe.apps.report.methods import method_groups, methods_sections
from kd_probe.apps.report.sections import (
    COLUMNS,
    UNICAM,
    Evidence,
    agreement_section,
    cell,
    comparison_line,
    comparison_rows,
    format_value,
    section,
    unicam_section,
    with_interval,
)
from kd_probe.apps.report.similarity import similarity_figure, similarity_section
from kd_probe.apps.report.stats import Measure, effective_keep, knowledge_point_measures
from kd_probe.apps.report.sweep import mean_std, sweep_section, threshold_sweep
from kd_probe.apps.report.verdicts import HYPOTHESES, VIEWS, hypotheses, method_line, verdicts
from kd_probe.core.uncertainty import LEVEL, RESAMPLES, seed_interval
from kd_probe.io.paths import write_atomically
from kd_probe.io.run_files import SUMMARY_FILE, RunFileError, error_text
from kd_probe.io.runs import METRICS, RunSummary, find_runs, load_run

__all__ = [
    "HYPOTHESES",
    "METRICS",
    "UNICAM",
    "Digest",
    "ReportError",
    "RunFileError",
    "RunSummary",
    "find_runs",
    "load_run",
    "main",
    "threshold_sweep",
    "verdicts",
    "write_report",
]

FIGURES = ("curves.png", "maps.png", "unicam.png", "similarity.png")
KEY_NUMBERS = (("n_fg", "N_fg"), ("fg_ratio", "fg_ratio"), ("d_mean", "D_mean"), ("rho", "ρ"))  # on a console
KNOWLEDGE_POINTS = tuple((key, label) for key, label in METRICS if key not in ("accuracy", "path_efficiency"))
_format = format_value  # kept for callers of the earlier name


def _pairs(distilled: list[RunSummary], baseline: list[RunSummary]) -> list[tuple[int, int]]:
    """Seed pairs as indices into the two lists (a ``ReportError`` when two runs of one role share a seed)."""
    check_one_run_per_seed([*distilled, *baseline])
    by_seed = {run.seed: index for index, run in enumerate(baseline)}
    return [(index, by_seed[run.seed]) for index, run in enumerate(distilled) if run.seed in by_seed]


def _views(evidence: Evidence) -> dict[str, tuple[list[dict[str, Measure]], list[dict[str, Measure]], str]]:
    """Per view (``all``, ``effective``) the knowledge-point measures of each group and what the view uses."""
    runs = [*evidence.distilled, *evidence.baseline]
    split = len(evidence.distilled)
    everything = [knowledge_point_measures(run.history) for run in runs]
    count = max((m["n_fg"].images for m in everything if m), default=0)
    views = {"all": (everything[:split], everything[split:], f"{count} with σ_f > 0")}
    keep = effective_keep([run.history for run in runs])
    if isinstance(keep, torch.Tensor) and bool(keep.any()):
        effective = [knowledge_point_measures(run.history, keep) for run in runs]
        used = f"{int(keep.sum())} of {keep.numel()}, effective in every run"
        views["effective"] = (effective[:split], effective[split:], used)
    else:
        reason = keep if isinstance(keep, str) else "no image is effective in every run"
        views["effective"] = ([], [], reason)
    return views


def _usable_runs(paths: Sequence[Path], group_summaries: bool) -> tuple[list[RunSummary], list[str], list[str]]:
    """The runs that load, one line per run left out (also printed on stderr), and what the runs differ in
    (:func:`~kd_probe.apps.report.groups.check_comparable`)."""
    runs, left_out, not_runs = [], [], []  # type: list[RunSummary], list[str], list[Path]
    try:
        found = find_runs(paths, not_runs=not_runs)
    finally:  # named even when no run is left
        for path in not_runs:
            print(
                f"kd-probe report: {path} is not a run: its {SUMMARY_FILE} was not written by kd_probe.",
                file=sys.stderr,
            )
    for path in found:
        try:
            runs.append(load_run(path))
        except RunFileError as error:
            left_out.append(f"{path}: {error}")
            print(f"kd-probe report: left out {path}: {error}", file=sys.stderr)
    if not runs:
        raise ReportError(f"no usable run in {', '.join(str(p) for p in paths)}: every run was left out.")
    differing = check_comparable(runs, group_summaries)
    check_one_run_per_seed(runs)
    return runs, left_out, differing


def write_report(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    figures: bool = True,
    resamples: int = RESAMPLES,
    note: str | None = None,
    group_summaries: bool = False,
    digest: Digest | None = None,
) -> tuple[Path, str]:
    """Write ``out_dir/report.md`` (and PNG figures when matplotlib is installed); return its path and text.

    Runs whose files are missing, damaged or hostile are left out (named on stderr and under "Left out").
    ``resamples``: bootstrap resamples behind every interval (seed 0). ``note``: a line written right under the
    title (the demo's ``--quick`` says its verdicts are on chance-level models). ``group_summaries``: compare
    only each group's summaries over its runs (no paired intervals, no verdicts), as runs that were not probed
    alike must be; without it such runs are refused. ``digest``: filled with the report's short form for a console
    (warnings, one line per hypothesis, key numbers, where report.md and the figures are).

    Raises:
        FileNotFoundError: no run folder among ``paths``.
        ReportError: ``out_dir`` is an existing file, no usable run, runs of one role only (none left out), runs of
            different protocols (or, without ``group_summaries``, different probe sets, layers or probe settings),
            or two runs with the same role and seed.
    """
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ReportError(f"--out {out_dir} is an existing file; expected a folder (created when missing).")
    runs, left_out, differing = _usable_runs(paths, group_summaries)
    distilled = [run for run in runs if run.role == "distilled"]
    baseline = [run for run in runs if run.role == "baseline"]
    if not left_out and not (distilled and baseline):
        found = "distilled" if distilled else "baseline"
        raise ReportError(
            f"a comparison needs both a distilled and a baseline run; {', '.join(str(p) for p in paths)} holds "
            f"only {found} runs ({', '.join(run.name for run in runs)})."
        )
    evidence = Evidence(distilled, baseline, _pairs(distilled, baseline), resamples)
    methods = method_groups(distilled)
    if len(methods) > 1 and group_summaries:
        raise ReportError(
            f"--group-summaries compares one distilled group with the baseline, and the runs hold "
            f"{len(methods)} KD methods ({', '.join(methods)}); report each method's runs with the baseline on "
            "their own."
        )
    pair_count = min(len(_pairs(group, baseline)) for group in methods.values()) if methods else 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = runs[0].summary.get("settings")
    lam = settings.get("lam", "not recorded") if isinstance(settings, dict) else "not recorded"
    lines = [
        "# kd_probe report",
        "",
        *([note, ""] if note else []),
        f"{time.strftime('%Y-%m-%d %H:%M')}; runs: {', '.join(cell(r.name) for r in runs)}; protocol: "
        f"{runs[0].protocol or 'not recorded'}; σ maps: {runs[0].sigma_method}, λ = {cell(str(lam))}.",
        "",
        f"Numbers in brackets are {LEVEL:.0%} bootstrap intervals over the probe images ({resamples} resamples, "
        "seed 0, expanded percentile)"
        + (
            "."
            if group_summaries
            else "; the difference of *these runs* is paired (the same images and resamples for both runs of a "
            + (
                "seed pair"
                if pair_count <= 1
                else f"seed pair, averaged over the {pair_count} pairs{' of each method' if len(methods) > 1 else ''}, "
                "which are not resampled"
            )
            + "): it says whether these networks differ. *Distillation's effect* is a "
            "t-interval over the seed pairs' differences: it counts how much the training seeds disagree and "
            "needs at least two seed pairs."
        ),
        "",
        *([] if group_summaries else [method_line()]),
        "",
    ]
    unfinished = [run for run in runs if not run.finished]
    if unfinished:
        lines += [
            f"**Unfinished runs** (training stopped before its end; reported up to their last completed probe): "
            f"{', '.join(f'{cell(run.name)} (epoch {run.last_epoch})' for run in unfinished)}.",
            "",
        ]
    if left_out:
        lines += ["## Left out", "", *(f"- {cell(line)}" for line in left_out), ""]
    views = _views(evidence)
    lines += _runs_section(evidence, views, show_method=len(methods) > 1)
    digest = Digest() if digest is None else digest
    measured = [*views["all"][0], *views["all"][1]]  # the Runs table's measures, replicates and all
    digest.warnings = health_warnings([*distilled, *baseline], measured)
    warnings = [line for warning in digest.warnings for line in (f"**Warning:** {warning}", "")]
    if len(methods) > 1 and baseline:
        knowledge = {id(run): own for run, own in zip([*distilled, *baseline], measured, strict=True)}
        lines += methods_sections(
            methods, baseline, out_dir, resamples=resamples, figures=figures, knowledge=knowledge, digest=digest
        )
        lines += ["", _METRICS_NOTE]
        return _written(out_dir, lines, digest)
    if distilled and baseline and group_summaries:
        lines += group_summary_lines(evidence, views, differing)
    elif distilled and baseline:
        for view, (d, b, used) in views.items():
            title = f"Distilled vs baseline: {VIEWS[view]} ({used})"
            if not d:
                lines += [f"## {title}", "", "Not available.", ""]
                continue
            rows = comparison_rows(evidence, (d, b), KNOWLEDGE_POINTS)
            if view == "all":
                rows = [_accuracy_row(distilled, baseline, evidence.pairs), *rows]
                for key, label in KEY_NUMBERS:
                    digest.summary += filter(None, [comparison_line(evidence, (d, b), key, label)])
            lines += section(title, COLUMNS, rows)
        lines += agreement_section(evidence, digest.summary)
        lines += unicam_section(evidence, digest.summary)
        lines += similarity_section(evidence, digest.summary)
    lines += ["## The paper's hypotheses", "", *warnings]
    if group_summaries:
        lines += ["- not judged: `--group-summaries` compares no pairs, and a verdict needs a paired interval."]
    elif distilled and baseline:
        verdict_lines, digest.hypotheses = hypotheses(evidence, views)
        lines += verdict_lines
    else:
        lines += ["- needs both distilled and baseline runs."]
    lines += sweep_section(runs)
    lines += ["", _METRICS_NOTE]
    if figures and not group_summaries:
        lines += _figures(runs, out_dir, digest)
    return _written(out_dir, lines, digest)


def _written(out_dir: Path, lines: list[str], digest: Digest) -> tuple[Path, str]:
    """Write report.md atomically; its path and text (the path also in ``digest``)."""
    text = "\n".join(lines) + "\n"
    path = write_atomically(out_dir / "report.md", lambda temporary: temporary.write_text(text, encoding="utf-8"))
    digest.path = path
    return path, text


_METRICS_NOTE = (
    "Metrics: N_fg / N_bg knowledge points per image on the foreground / background at the last "
    "checkpoint; fg_ratio = mean N_fg/(N_fg+N_bg); D_mean, D_std = weight travel until an image's "
    "foreground knowledge peaks; ρ = share of knowledge points ever found that survive to the end; "
    "path efficiency = straight-line distance / path length of the weights (WeightTrajectoryMonitor). "
    "Effective images: the [KP] reference code's filter (σ_f > 0 at every checkpoint, foreground entropy "
    "at most the background's at late checkpoints), knowledge points recounted on the images effective in "
    "every run, as the authors compared networks."
)


def _runs_section(evidence: Evidence, views: dict, show_method: bool = False) -> list[str]:
    """One row per run, distilled then baseline: accuracy, path efficiency and the knowledge-point metrics (all
    probe images) with their intervals; with ``show_method`` a distilled run's role names its KD method."""
    runs = [*evidence.distilled, *evidence.baseline]  # the order of the view's measures
    measures = dict(zip((id(run) for run in runs), [*views["all"][0], *views["all"][1]], strict=True))
    rows = []
    for run in runs:
        own = measures.get(id(run), {})
        cells = []
        for key, _ in METRICS:
            if key in own:
                cells.append(with_interval(key, own[key].interval(RESAMPLES), own[key].estimate))
            else:
                cells.append(format_value(key, run.metrics.get(key, math.nan)))
        name = cell(run.name) if run.finished else f"{cell(run.name)} (unfinished)"
        role = f"{run.role} ({run.group})" if show_method and run.group != run.role else run.role
        rows.append([name, cell(role), str(run.seed), *cells])
    return section("Runs", ["run", "role", "seed", *(label for _, label in METRICS)], rows)


def _accuracy_row(
    distilled: list[RunSummary], baseline: list[RunSummary], pairs: Sequence[tuple[int, int]]
) -> list[str]:
    """Test accuracy (no per-image data: mean ± std over seeds; distillation's effect over the seed pairs)."""
    cells = []
    for group in (distilled, baseline):
        mean, std = mean_std([run.metrics["accuracy"] for run in group])
        cells.append(
            f"{format_value('accuracy', mean)} ± {format_value('accuracy', std)}"
            if len(group) > 1
            else format_value("accuracy", mean)
        )
    d = mean_std([run.metrics["accuracy"] for run in distilled])[0]
    b = mean_std([run.metrics["accuracy"] for run in baseline])[0]
    seeds = seed_interval([distilled[i].metrics["accuracy"] - baseline[j].metrics["accuracy"] for i, j in pairs])
    effect = (
        f"{seeds.estimate * 100:+.1f} [{seeds.low * 100:+.1f}, {seeds.high * 100:+.1f}] points"
        if seeds.images >= 2 and math.isfinite(seeds.low)
        else "needs ≥ 2 seed pairs"
    )
    return ["accuracy (test set)", *cells, f"{(d - b) * 100:+.1f} points" if math.isfinite(d - b) else "–", effect]


def _figures(runs: list[RunSummary], out_dir: Path, digest: Digest) -> list[str]:
    try:
        from kd_probe.apps.report.figures import curves_figure, maps_figure, unicam_figure
    except ImportError:  # matplotlib is the optional `report` extra
        return ["", "(Install the `report` extra, matplotlib, for the figures.)"]
    lines = ["", "## Figures", ""]
    draws = (curves_figure, maps_figure, unicam_figure, similarity_figure)
    for draw, name in zip(draws, FIGURES, strict=True):
        try:
            drawn = draw(runs, out_dir / name)
        except Exception as error:  # data that loaded but cannot be drawn: the report goes on without it
            print(f"kd-probe report: {name} not drawn: {error_text(error)}", file=sys.stderr)
            lines.append(f"- {name} not drawn: {cell(error_text(error))}")
            continue
        if drawn is not None:
            lines.append(f"![{drawn.stem}]({drawn.name})")
            digest.figures.append(drawn)
    return lines


def main(argv: list[str] | None = None) -> int:
    """``kd-probe report RUN_DIR... [--out DIR]``."""
    parser = add_arguments(Parser(prog="kd-probe report", description=__doc__))
    args = parser.parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    try:
        path, text = write_report(
            args.runs,
            args.out or args.runs[0],
            figures=not args.no_figures,
            resamples=getattr(args, "resamples", RESAMPLES),
            group_summaries=getattr(args, "group_summaries", False),
        )
    except (FileNotFoundError, ReportError) as error:
        print(f"kd-probe report: {error}", file=sys.stderr)
        return 2
    print(text)
    print(f"Report written to {path}")
    return 0
