"""``kd-probe report RUN_DIR...``: does distillation change what the student learns? (the [KP] hypotheses)

Reads each run's ``kd_probe_summary.json``, ``kd_probe_history.pt`` and ``kd_probe_run.json`` (written by the
demo; otherwise the test accuracy is read from the TensorBoard event files with TensorBoard's own reader)
and writes ``report.md``: per run and as mean ± std over seeds, the accuracy and every knowledge-point
metric; one verdict line per hypothesis, stating the observed direction, its size and whether the seeds
agree; a threshold sweep recomputed from the saved entropy maps; and, with matplotlib, PNG figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kd_probe.core.knowledge_points import count_knowledge_points

__all__ = ["HYPOTHESES", "RunSummary", "find_runs", "load_run", "main", "threshold_sweep", "verdicts", "write_report"]

RUN_FILE, SUMMARY_FILE, HISTORY_FILE = "kd_probe_run.json", "kd_probe_summary.json", "kd_probe_history.pt"
UNICAM_FILE = "kd_probe_unicam.pt"
METRICS = (
    ("accuracy", "accuracy"),
    ("n_fg", "N_fg"),
    ("n_bg", "N_bg"),
    ("fg_ratio", "fg_ratio"),
    ("d_mean", "D_mean"),
    ("d_std", "D_std"),
    ("rho", "ρ"),
    ("rho_all", "ρ_all"),
    ("path_efficiency", "path efficiency"),
)
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
AGREEMENT = (  # [WK]'s agreement with the teacher, last AgreementProbe values (tag suffix, column)
    ("cam_cosine", "CAM cosine"),
    ("cam_energy_in_mask/student", "CAM energy on object"),
    ("adv_transfer", "adversarial transfer"),
    ("invariance/color/student", "colour invariance"),
    ("invariance/crop/student", "crop invariance"),
    ("invariance/shift/student", "shift invariance"),
)
UNICAM = (  # [UC]'s scores at the last UniCAMProbe probe (history key prefix, column)
    ("fss", "FSS"),
    ("fss_v", "FSS (V)"),
    ("rs/teacher", "RS teacher"),
    ("rs/student", "RS student"),
    ("rs/distilled", "RS distilled"),
    ("rs/residual", "RS residual"),
)


@dataclass
class RunSummary:
    """One probed run: its role (distilled / baseline), seed, test accuracy and final metrics."""

    path: Path
    name: str
    role: str
    seed: int
    metrics: dict[str, float]
    summary: dict[str, Any] = field(repr=False)
    _history: dict[str, Any] | None = field(default=None, repr=False)
    _unicam: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def unicam(self) -> dict[str, Any] | None:
        """The UniCAMProbe's file (scores and maps per probe), when the run had one (read once)."""
        path = self.path / UNICAM_FILE
        if self._unicam is None and path.exists():
            self._unicam = torch.load(path, weights_only=False)
        return self._unicam

    @property
    def history(self) -> dict[str, Any]:
        if self._history is None:
            self._history = torch.load(self.path / self.summary.get("history_file", HISTORY_FILE), weights_only=False)
        return self._history


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run folders among ``paths``: each path itself when it holds a summary, else its sub-folders that do."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / SUMMARY_FILE).exists():
            runs.append(path)
        else:
            runs.extend(sorted(p.parent for p in path.glob(f"*/{SUMMARY_FILE}")))
    if not runs:
        raise FileNotFoundError(
            f"no run with a {SUMMARY_FILE} in {[str(p) for p in paths]}; run a "
            "KnowledgePointProbe (or `kd-probe demo`) first."
        )
    return runs


def load_run(path: Path) -> RunSummary:
    """A run's summary, its role and seed (from ``kd_probe_run.json``, else from the folder name) and accuracy."""
    path = Path(path)
    summary = json.loads((path / SUMMARY_FILE).read_text())
    info = json.loads((path / RUN_FILE).read_text()) if (path / RUN_FILE).exists() else {}
    role = info.get("role") or ("distilled" if "distil" in path.name else "baseline")
    own, head = _scalars(path), _scalars(path / "head")  # each event folder read once
    accuracy = info.get("test_accuracy")
    if accuracy is None:
        accuracy = next((series[-1] for series in (own.get("test/acc"), head.get("test/acc")) if series), None)
    metrics = {key: _number(summary.get(key)) for key, _ in METRICS if key not in ("accuracy", "path_efficiency")}
    metrics["accuracy"] = _number(accuracy)
    metrics["path_efficiency"] = _path_efficiency(own)
    scalars = {**head, **own}
    for suffix, _ in AGREEMENT:
        series = scalars.get(f"kd_probe/agreement/{suffix}")
        metrics[f"agreement/{suffix}"] = series[-1] if series else math.nan
    return RunSummary(path, info.get("run", path.name), role, int(info.get("seed", 0)), metrics, summary)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and value is not None else math.nan


def _scalars(path: Path) -> dict[str, list[float]]:
    """Every scalar series of a run folder, read with TensorBoard's own event reader."""
    if not path.is_dir() or not list(path.glob("events.out.tfevents.*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _path_efficiency(scalars: dict[str, list[float]]) -> float:
    """Mean over the tracked modules of the WeightTrajectoryMonitor's final path efficiency."""
    values = [series[-1] for tag, series in scalars.items() if tag.endswith("/path_efficiency") and series]
    return statistics.fmean(values) if values else math.nan


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
    """One line per hypothesis: the observed direction, the size of the difference, whether seeds agree."""
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


def write_report(paths: Sequence[Path], out_dir: Path, *, figures: bool = True) -> tuple[Path, str]:
    """Write ``out_dir/report.md`` (and PNG figures when matplotlib is installed); return its path and text."""
    runs = [load_run(path) for path in find_runs(paths)]
    distilled = [run for run in runs if run.role == "distilled"]
    baseline = [run for run in runs if run.role == "baseline"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# kd_probe report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; runs: {', '.join(r.name for r in runs)}.",
        "",
    ]
    lines += _section(
        "Runs",
        ["run", "role", "seed", *(label for _, label in METRICS)],
        [[run.name, run.role, str(run.seed), *(_format(key, run.metrics[key]) for key, _ in METRICS)] for run in runs],
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
            [run.name, *(_format("", run.metrics.get(f"agreement/{s}", math.nan)) for s, _ in AGREEMENT)]
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
    path = out_dir / "report.md"
    path.write_text(text)
    return path, text


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
    names = [
        curves_figure(runs, out_dir / "curves.png"),
        maps_figure(runs, out_dir / "maps.png"),
        unicam_figure(runs, out_dir / "unicam.png"),
    ]
    return ["", "## Figures", ""] + [f"![{name.stem}]({name.name})" for name in names if name is not None]


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
    except FileNotFoundError as error:
        print(f"kd-probe report: {error}", file=sys.stderr)
        return 2
    print(text)
    print(f"Report written to {path}")
    return 0
