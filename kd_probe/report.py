"""``kd-probe report RUN_DIR...``: does distillation change what the student learns? (the [KP] hypotheses)

Reads each run's ``kd_probe_summary.json``, ``kd_probe_history.pt`` and ``kd_probe_run.json`` (written by the
demo; otherwise the test accuracy is read from the TensorBoard event files with TensorBoard's own reader)
and writes ``report.md``: per run and as mean ± std over seeds, the accuracy and every knowledge-point
metric; one verdict line per hypothesis, stating the observed direction, its size and whether the seeds
agree; a threshold sweep recomputed from the saved entropy maps; and, with matplotlib, PNG figures.

Files are data, never code: ``.pt`` files load with ``torch.load(..., weights_only=True)`` only (tensors and
plain containers; a file that holds anything else is refused, not run), and a path read from a file (the
summary's ``history_file``) is followed only while it stays inside the run's folder. A run with a missing,
damaged, truncated, hostile or malformed file is left out: one line on stderr names the file and what is
wrong, and report.md lists it under "Left out"; with no usable run left the command exits with status 2.

Protocols are never averaged together: the runs of one report must share the ``protocol`` of their
``kd_probe_run.json`` ("hinton" or "paper"; runs without that file count as "not recorded"), else the report
is refused with a sentence naming which runs have which protocol — report each protocol's runs on their
own. Likewise for the σ method of the knowledge-point probes ("faithful" or "secant", from the summary's
settings). Seeds pair a distilled with a baseline run, so two runs with the same role and seed are refused too,
naming both folders. report.md and the figures are written atomically (a temporary file in the same
folder, then ``os.replace``): a reader never sees half a report.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kd_probe._paths import write_atomically
from kd_probe._run_files import (
    AGREEMENT,
    METRICS,
    RunFileError,
    RunSummary,
    error_text,
    find_runs,
    load_run,
)
from kd_probe.core.knowledge_points import count_knowledge_points

__all__ = [
    "HYPOTHESES",
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

FIGURES = ("curves.png", "maps.png", "unicam.png")
HYPOTHESES = (
    ("H1", "more foreground knowledge points and a higher foreground ratio", (("n_fg", 1), ("fg_ratio", 1))),
    (
        "H2",
        "lower D_mean and D_std: foreground knowledge learned with less weight travel and more at once",
        (("d_mean", -1), ("d_std", -1)),
    ),
    ("H3", "higher stability ρ: fewer knowledge points found and then dropped", (("rho", 1),)),
)
SWEEP = (0.1, 0.2, 0.3, 0.5)
UNICAM = (  # [UC]'s scores at the last UniCAMProbe probe (history key prefix, column)
    ("fss", "FSS"),
    ("fss_v", "FSS (V)"),
    ("rs/teacher", "RS teacher"),
    ("rs/student", "RS student"),
    ("rs/distilled", "RS distilled"),
    ("rs/residual", "RS residual"),
)


class ReportError(ValueError):
    """The report as a whole is refused (no usable run, mixed protocols, two runs for one seed)."""


def _sign(value: float) -> int:
    return 0 if not math.isfinite(value) or value == 0 else (1 if value > 0 else -1)


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.pstdev(finite) if len(finite) > 1 else 0.0


def _format(key: str, value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.1%}" if key == "accuracy" else f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"


def verdicts(distilled: list[RunSummary], baseline: list[RunSummary]) -> list[str]:
    """One line per hypothesis: the observed direction, the size of the difference, whether seeds agree.

    Raises:
        ReportError: two runs of one role share a seed (the seed pairing would silently drop one).
    """
    _check_one_run_per_seed([*distilled, *baseline])
    by_seed = {run.seed: run for run in baseline}
    pairs = [(run, by_seed[run.seed]) for run in distilled if run.seed in by_seed]
    lines = []
    for label, claim, predictions in HYPOTHESES:
        parts, agree, signs = [], [], []
        for key, expected in predictions:
            d, _ = _mean_std([run.metrics[key] for run in distilled])
            b, _ = _mean_std([run.metrics[key] for run in baseline])
            difference = d - b
            relative = f", {difference / abs(b):+.0%}" if math.isfinite(b) and b != 0 else ""
            parts.append(f"{dict(METRICS)[key]} {_format(key, d)} vs {_format(key, b)} ({difference:+.3g}{relative})")
            signs.append(math.copysign(1, difference) * expected if math.isfinite(difference) and difference else 0)
            agree.append(sum(1 for a, c in pairs if (a.metrics[key] - c.metrics[key]) * expected > 0))
        if any(s == 0 for s in signs):
            status = "undetermined (no difference or missing values)"
        elif all(s > 0 for s in signs):
            status = "holds"
        elif all(s < 0 for s in signs):
            status = "does not hold (the opposite direction)"
        else:
            status = "mixed"
        seeds = f"{min(agree)}/{len(pairs)} seed pairs in the predicted direction" if pairs else "no paired seeds"
        lines.append(f"- **{label}** (distilled vs baseline: {claim}): **{status}** — {'; '.join(parts)}; {seeds}.")
    return lines


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
            row[f"{role}_n_fg"], row[f"{role}_fg_ratio"] = _mean_std(n_fg)[0], _mean_std(ratio)[0]
        rows.append(row)
    return rows


def _check_one_run_per_seed(runs: Sequence[RunSummary]) -> None:
    """A ``ReportError`` naming both folders when two runs have the same role and seed."""
    seen: dict[tuple[str, int], RunSummary] = {}
    for run in runs:
        other = seen.setdefault((run.role, run.seed), run)
        if other is not run:
            raise ReportError(
                f"two {run.role} runs have seed {run.seed}, {other.path} and {run.path}; each seed pairs one "
                "distilled with one baseline run, so report them separately."
            )


def _check_one_protocol(runs: Sequence[RunSummary]) -> None:
    """A ``ReportError`` naming which runs have which protocol (or σ method) when they do not all share one."""
    for what, value_of in (("protocols", lambda r: r.protocol), ("σ methods", lambda r: r.sigma_method)):
        groups: dict[str, list[str]] = {}
        for run in runs:
            groups.setdefault(value_of(run) or "not recorded", []).append(str(run.path))
        if len(groups) > 1:
            named = "; ".join(f"{value}: {', '.join(paths)}" for value, paths in groups.items())
            raise ReportError(
                f"the runs have different {what} ({named}) and are never averaged together; report each "
                f"group's runs on their own."
            )


def _usable_runs(paths: Sequence[Path]) -> tuple[list[RunSummary], list[str]]:
    """The runs that load, and one line per run left out (also printed on stderr)."""
    runs, left_out = [], []
    for path in find_runs(paths):
        try:
            runs.append(load_run(path))
        except RunFileError as error:
            left_out.append(f"{path}: {error}")
            print(f"kd-probe report: left out {path}: {error}", file=sys.stderr)
    if not runs:
        raise ReportError(f"no usable run in {', '.join(str(p) for p in paths)}: every run was left out.")
    _check_one_protocol(runs)
    _check_one_run_per_seed(runs)
    return runs, left_out


def write_report(paths: Sequence[Path], out_dir: Path, *, figures: bool = True) -> tuple[Path, str]:
    """Write ``out_dir/report.md`` (and PNG figures when matplotlib is installed); return its path and text.

    Runs whose files are missing, damaged or hostile are left out (named on stderr and under "Left out").

    Raises:
        FileNotFoundError: no run folder among ``paths``.
        ReportError: no usable run, runs of different protocols, or two runs with the same role and seed.
    """
    runs, left_out = _usable_runs(paths)
    distilled = [run for run in runs if run.role == "distilled"]
    baseline = [run for run in runs if run.role == "baseline"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# kd_probe report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; runs: {', '.join(_cell(r.name) for r in runs)}; protocol: "
        f"{runs[0].protocol or 'not recorded'}; σ maps: {runs[0].sigma_method}.",
        "",
    ]
    if left_out:
        lines += ["## Left out", "", *(f"- {_cell(line)}" for line in left_out), ""]
    lines += _section(
        "Runs",
        ["run", "role", "seed", *(label for _, label in METRICS)],
        [
            [_cell(run.name), run.role, str(run.seed), *(_format(key, run.metrics[key]) for key, _ in METRICS)]
            for run in runs
        ],
    )
    group_rows = []
    for role, group in (("distilled", distilled), ("baseline", baseline)):
        cells = []
        for key, _ in METRICS:
            mean, std = _mean_std([run.metrics[key] for run in group])
            cells.append(f"{_format(key, mean)} ± {_format(key, std)}" if len(group) > 1 else _format(key, mean))
        group_rows.append([role, str(len(group)), *cells])
    lines += _section(
        "Distilled vs baseline (mean ± std over seeds)", ["group", "runs", *(label for _, label in METRICS)], group_rows
    )
    if any(math.isfinite(run.metrics.get(f"agreement/{suffix}", math.nan)) for run in runs for suffix, _ in AGREEMENT):
        rows = [
            [_cell(run.name), *(_format("", run.metrics.get(f"agreement/{s}", math.nan)) for s, _ in AGREEMENT)]
            for run in runs
        ]
        lines += _section(
            "Agreement with the teacher (what gets distilled, last probe)",
            ["run", *(label for _, label in AGREEMENT)],
            rows,
        )
    lines += _unicam_section(distilled, baseline)
    lines += ["## The paper's hypotheses", ""]
    lines += verdicts(distilled, baseline) if distilled and baseline else ["- needs both distilled and baseline runs."]
    lines += [
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
    lines += [
        "",
        "Metrics: N_fg / N_bg knowledge points per image on the foreground / background at the last "
        "checkpoint; fg_ratio = mean N_fg/(N_fg+N_bg); D_mean, D_std = weight travel until an image's "
        "foreground knowledge peaks; ρ = share of knowledge points ever found that survive to the end; "
        "path efficiency = straight-line distance / path length of the weights (WeightTrajectoryMonitor).",
    ]
    if figures:
        lines += _figures(runs, out_dir)
    text = "\n".join(lines) + "\n"
    path = write_atomically(out_dir / "report.md", lambda temporary: temporary.write_text(text, encoding="utf-8"))
    return path, text


def _cell(text: str) -> str:
    """Text from a file as one markdown table cell or list item: no line breaks, no column separators."""
    return " ".join(text.split()).replace("|", "\\|")


def _last_unicam(run: RunSummary) -> tuple[dict[str, Any], list[str]]:
    """The last successful UniCAMProbe entry of a run and its student layers (empty when there is none)."""
    record = run.unicam
    entries = [e for e in (record or {}).get("entries", []) if "failed" not in e]
    return (entries[-1], [pair[0] for pair in record["layers"]]) if record and entries else ({}, [])


def _unicam_section(distilled: list[RunSummary], baseline: list[RunSummary]) -> list[str]:
    """FSS and RS of distilled vs baseline per layer (mean ± std over seeds) and one line on the deepest."""
    last = {id(run): _last_unicam(run) for run in (*distilled, *baseline)}
    layers = next((names for entry, names in last.values() if names), [])
    if not layers:
        return []
    rows, means = [], {}
    for layer in layers:
        for role, group in (("distilled", distilled), ("baseline", baseline)):
            cells = []
            for key, _ in UNICAM:
                values = [float(last[id(run)][0].get(f"{key}/{layer}", math.nan)) for run in group]
                mean, std = _mean_std(values)
                means[(role, key, layer)] = mean
                cells.append(f"{_format('', mean)} ± {_format('', std)}" if len(group) > 1 else _format("", mean))
            rows.append([layer, role, *cells])
    lines = _section(
        "What the student holds of the teacher (UniCAM: FSS and RS, last probe)",
        ["layer", "group", *(label for _, label in UNICAM)],
        rows,
    )
    deepest = layers[-1]

    def compare(key: str, more: str, less: str) -> str:
        d, b = means[("distilled", key, deepest)], means[("baseline", key, deepest)]
        word = "no different" if not (math.isfinite(d) and math.isfinite(b)) or d == b else (more if d > b else less)
        return f"{word} ({dict(UNICAM)[key]} {_format('', d)} vs {_format('', b)})"

    lines += [
        f"At {deepest}, the distilled student's features are "
        f"{compare('fss', 'closer to the teacher', 'further from the teacher')}; its label-relevant knowledge "
        f"beyond the teacher is {compare('rs/distilled', 'larger', 'smaller')}; the teacher's label-relevant "
        f"knowledge it lacks is {compare('rs/residual', 'larger', 'smaller')}. FSS = R*(teacher, student) "
        "features; RS = R*(features, labels); distilled = R*(student | teacher, labels); residual = "
        "R*(teacher | student, labels) (bias-corrected squared distance correlations on the probe batch).",
        "",
    ]
    return lines


def _section(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section with one table."""
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _figures(runs: list[RunSummary], out_dir: Path) -> list[str]:
    try:
        from kd_probe._figures import curves_figure, maps_figure, unicam_figure
    except ImportError:  # matplotlib is the optional `report` extra
        return ["", "(Install the `report` extra, matplotlib, for the figures.)"]
    lines = ["", "## Figures", ""]
    for draw, name in zip((curves_figure, maps_figure, unicam_figure), FIGURES, strict=True):
        try:
            drawn = draw(runs, out_dir / name)
        except Exception as error:  # data that loaded but cannot be drawn: the report goes on without it
            print(f"kd-probe report: {name} not drawn: {error_text(error)}", file=sys.stderr)
            lines.append(f"- {name} not drawn: {_cell(error_text(error))}")
            continue
        if drawn is not None:
            lines.append(f"![{drawn.stem}]({drawn.name})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """``kd-probe report RUN_DIR... [--out DIR]``."""
    parser = add_arguments(argparse.ArgumentParser(prog="kd-probe report", description=__doc__))
    args = parser.parse_args(argv)
    return run(args)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or experiment folders holding runs")
    parser.add_argument("--out", type=Path, default=None, help="where report.md goes (default: the first folder)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        path, text = write_report(args.runs, args.out or args.runs[0], figures=not args.no_figures)
    except (FileNotFoundError, ReportError) as error:
        print(f"kd-probe report: {error}", file=sys.stderr)
        return 2
    print(text)
    print(f"Report written to {path}")
    return 0
