"""``kd-probe report`` on several KD methods: what each method transfers, against one no-teacher baseline.

When the distilled runs of a report name more than one KD method (``kd_method`` in their ``kd_probe_run.json``,
as ``kd-probe demo --methods`` writes), report.md compares the methods instead of one distilled group:

- **What each method transfers**, two tables per level: a row per method and a column per measure (accuracy,
  knowledge points, learning speed and stability; CAM agreement, adversarial transfer at each ε, invariance, FSS
  and RS), each cell the method's difference from the baseline with its interval. *Distillation's effect* is the
  t-interval over seed pairs (from two seed pairs on); *these runs* is the paired bootstrap over probe images
  (methods §5.5): the two are never mixed.
- **The paper's hypotheses per method**, at both levels, Holm over the methods and the hypothesis's metrics.
- **A ranking** per question, saying which methods cannot be told apart from the leader.
- **methods.png**: a forest plot of every method × measure with the intervals.

The numbers and the multiple-comparison procedure are in :mod:`kd_probe.apps.report.method_stats`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from kd_probe.apps.options import KD_METHODS
from kd_probe.apps.report.digest import Digest
from kd_probe.apps.report.groups import weight_path_difference
from kd_probe.apps.report.method_stats import (
    Cell,
    Column,
    MethodEvidence,
    columns,
    evidence_of,
    holm_family_note,
    hypothesis_words,
    method_cells,
    ranking,
)
from kd_probe.apps.report.sections import cell, section, signed_value, unprobed_sentence, with_interval
from kd_probe.apps.report.stats import Measure
from kd_probe.apps.report.verdicts import HYPOTHESES, combined_word
from kd_probe.io.run_files import error_text
from kd_probe.io.runs import RunSummary

__all__ = ["FIGURE", "QUESTIONS", "method_groups", "methods_sections"]

FIGURE = "methods.png"
QUESTIONS = (  # (measure key or prefix, the question a ranking answers)
    ("n_fg", "transfers the most foreground knowledge points (N_fg)"),
    ("fg_ratio", "gives the highest foreground ratio (fg_ratio)"),
    ("d_mean", "learns its foreground knowledge with the least weight travel (D_mean)"),
    ("rho", "learns most stably (ρ)"),
    ("cam_cosine", "localises most like the teacher (Grad-CAM cosine)"),
    ("adv_transfer/", "shares most of the teacher's adversarial weaknesses (adversarial transfer, largest ε)"),
    ("fss", "holds features closest to the teacher's (FSS)"),
    ("accuracy", "is the most accurate (test accuracy)"),
)
TABLES = (("knowledge", "accuracy and knowledge points"), ("teacher", "agreement with the teacher and UniCAM"))
LEVELS = {
    "seeds": "distillation's effect (t-interval over seed pairs)",
    "runs": "these runs (paired over probe images)",
}


def method_groups(distilled: list[RunSummary]) -> dict[str, list[RunSummary]]:
    """The distilled runs by KD method, the methods in :data:`kd_probe.losses.METHODS`'s order (others after
    them, by name), so that a report reads the same whatever order its folders were given in."""
    groups: dict[str, list[RunSummary]] = {}
    for run in distilled:
        groups.setdefault(run.group, []).append(run)
    known = {name: index for index, name in enumerate(KD_METHODS)}
    return {name: groups[name] for name in sorted(groups, key=lambda name: (known.get(name, len(known)), name))}


def _shown(key: str, found: Cell, level: str) -> str:
    """One table cell: the difference with its interval and Holm's flag, or why there is none."""
    if found.note:
        return cell(found.note)
    shown = found.seeds if level == "seeds" else found.runs
    text = with_interval(key, shown, found.estimate, signed=True)
    if key == "accuracy":
        text = format_signed(key, found.estimate)
        if shown is not None and math.isfinite(shown.low):
            low, high = (f"{value * 100:+.1f}" for value in (shown.low, shown.high))
            text = text.replace(" points", f" [{low}, {high}] points")
    flag = getattr(found, f"{level}_flag")
    return f"**{text} {'▲' if flag > 0 else '▼'}**" if flag else text


def _tables(evidence: MethodEvidence, measures: list[Column], level: str) -> list[str]:
    lines: list[str] = []
    for table, what in TABLES:
        chosen = [c for c in measures if c.table == table]
        if not chosen:
            continue
        rows = []
        for method, runs in evidence.methods.items():
            pairs = len(evidence.pairs(runs, evidence.baseline))
            cells = [_shown(c.key, evidence.cells[method, c.key], level) for c in chosen]
            rows.append([cell(method), str(pairs), *cells])
        title = f"What each method transfers: {what} — {LEVELS[level]}"
        lines += section(title, ["method", "seed pairs", *(c.label for c in chosen)], rows)
    return lines


def _hypotheses(evidence: MethodEvidence, level: str, short: list[str] | None = None) -> list[str]:
    """The hypotheses' words per method at one level; ``short``: gets one plain line per method."""
    rows = []
    words = {label: hypothesis_words(evidence, predictions, level) for label, _, predictions in HYPOTHESES}
    yes, no = ("holds", "does not hold") if level == "seeds" else ("differ as predicted", "differ the other way")
    runs = [run for group in (*evidence.methods.values(), evidence.baseline) for run in group]
    apart = weight_path_difference(runs)  # D summed over steps in some runs, over checkpoints in others
    for method in evidence.methods:
        rows.append(
            [
                cell(method),
                *(
                    "not compared (D summed differently)"
                    if apart and label == "H2"
                    else combined_word(words[label][method], yes, no)
                    for label, _, _ in HYPOTHESES
                ),
            ]
        )
    if short is not None:
        where = "about distillation" if level == "seeds" else "these runs"
        names = [label for label, _, _ in HYPOTHESES]
        short += [f"{row[0]} ({where}): " + "; ".join(map(" ".join, zip(names, row[1:], strict=True))) for row in rows]
    columns_ = ["method", *(f"{label}: {claim}" for label, claim, _ in HYPOTHESES)]
    title = "The paper's hypotheses per method: " + (
        "about distillation (seed pairs)" if level == "seeds" else "about these runs (probe images)"
    )
    return section(title, columns_, rows)


def _ranking_lines(evidence: MethodEvidence, measures: list[Column]) -> list[str]:
    by_key = {c.key: c for c in measures}
    eps = [c.key for c in measures if c.key.startswith("adv_transfer/")]
    lines = []
    for key, question in QUESTIONS:
        key = (eps[-1] if eps else "") if key == "adv_transfer/" else key
        if key not in by_key or (found := ranking(evidence, by_key[key])) is None:
            continue
        leader, value = found.order[0]
        where = "over the seed pairs" if found.level == "seeds" else "in these runs"
        leading = evidence.cells[leader, key]
        flag = getattr(leading, f"{found.level}_flag")
        tested = getattr(leading, found.level) is not None and math.isfinite(getattr(leading, found.level).low)
        versus = "" if flag or not tested else "; it does not differ from the baseline's"
        parts = [f"**{cell(leader)}** ({format_signed(key, value)} vs the baseline{versus})"]
        if found.ahead_of:
            parts.append(f"ahead of {', '.join(map(cell, found.ahead_of))}")
        if found.not_told_apart:
            parts.append(f"cannot be told apart from {', '.join(map(cell, found.not_told_apart))}")
        if found.untested:
            parts.append(
                f"not compared with {', '.join(map(cell, found.untested))} (no per-image data: needs ≥ 2 seed pairs)"
            )
        comparisons = len(found.order) - 1
        how = f"Bonferroni over {comparisons} comparison{'s' if comparisons > 1 else ''} with the leader"
        lines.append(f"- Which method {question}? {'; '.join(parts)} ({where}{'' if found.untested else '; ' + how}).")
    return ["## Which method transfers what", "", *(lines or ["- No measure has values for two methods."]), ""]


def format_signed(key: str, value: float) -> str:
    """A signed difference as the tables show it; accuracy in percentage points."""
    if key == "accuracy":
        return f"{value * 100:+.1f} points" if math.isfinite(value) else "–"
    return signed_value(key, value)


def methods_sections(
    methods: dict[str, list[RunSummary]],
    baseline: list[RunSummary],
    out_dir: Path,
    *,
    resamples: int,
    figures: bool,
    knowledge: dict[int, dict[str, Measure]] | None = None,
    digest: Digest | None = None,
) -> list[str]:
    """report.md's sections comparing several KD methods with the baseline (and ``methods.png``); ``knowledge``:
    the runs' knowledge-point measures the Runs table already computed (by ``id(run)``), reused with their
    bootstrap replicates. ``digest``: its warnings are written above the hypotheses, and it gets one plain line
    per method for the hypotheses and for the key numbers."""
    digest = Digest() if digest is None else digest
    evidence = evidence_of(methods, baseline, resamples, knowledge=knowledge)
    measures = columns(evidence)
    method_cells(evidence, measures)
    pairs = evidence.seed_pairs
    lines = [
        f"**{len(methods)} KD methods** ({', '.join(map(cell, methods))}) against one no-teacher baseline; each cell "
        "is the method − baseline difference (the mean over its seed pairs) with its interval. "
        + holm_family_note(len(methods)),
        "",
    ]
    groups = [*methods.items(), ("baseline", baseline)]
    for probe, has, purpose in (
        ("an AgreementProbe", lambda run: bool(run.agreement), "agreement with the teacher and adversarial transfer"),
        ("a UniCAMProbe", lambda run: bool(run.unicam), "FSS and RS"),
    ):
        sentence = unprobed_sentence(groups, [has(run) for _, runs in groups for run in runs], probe, purpose)
        lines += [sentence, ""] if sentence else []
    if pairs >= 2:
        lines += _tables(evidence, measures, "seeds")
    else:
        lines += [
            "## What each method transfers: distillation's effect",
            "",
            "No verdict about distillation: "
            + ("a method has one seed pair" if pairs == 1 else "a method has no seed pair")
            + "; the effect of a training procedure needs the seed-to-seed spread, so at least 2 seed pairs "
            "(`kd-probe demo --methods ... --seeds 3`). The tables below say whether *these runs* differ.",
            "",
        ]
    lines += _tables(evidence, measures, "runs")
    lines += [line for warning in digest.warnings for line in (f"**Warning:** {warning}", "")]
    if pairs >= 2:
        lines += _hypotheses(evidence, "seeds", digest.hypotheses)
    if pairs < 2:
        digest.hypotheses.append("about distillation: no verdict (a method has fewer than 2 seed pairs)")
    lines += _hypotheses(evidence, "runs", digest.hypotheses if pairs < 2 else None)
    digest.summary_title = "Each KD method − the baseline (these runs, all probe images)"
    shown = [column for column in measures if column.key in ("n_fg", "fg_ratio", "d_mean", "rho")]
    for method in methods:
        found = [(column, evidence.cells[method, column.key]) for column in shown]
        digest.summary.append(
            f"{method}: "
            + ", ".join(f"{c.label} {with_interval(c.key, x.runs, x.estimate, signed=True)}" for c, x in found)
        )
    lines += [
        "Hypotheses on all probe images; each is one family over the methods and its metrics (Holm, family-wise "
        f"5 %). Words: {', '.join(f'*{w}*' for w in ('holds', 'partly', 'mixed', 'not distinguishable'))} as in "
        "methods §5.5.",
        "",
    ]
    lines += _ranking_lines(evidence, measures)
    if figures:
        drawn = _figure(evidence, measures, out_dir / FIGURE)
        digest.figures += [out_dir / FIGURE] if f"![methods]({FIGURE})" in drawn else []
        lines += drawn
    return lines


def _figure(evidence: MethodEvidence, measures: list[Column], path: Path) -> list[str]:
    try:
        from kd_probe.apps.report.figures import methods_figure
    except ImportError:  # matplotlib is the optional `report` extra
        return ["(Install the `report` extra, matplotlib, for the figures.)", ""]
    try:
        methods_figure(evidence, measures, path)
    except Exception as error:  # data that loaded but cannot be drawn: the report goes on without it
        print(f"kd-probe report: {path.name} not drawn: {error_text(error)}", file=sys.stderr)
        return [f"- {path.name} not drawn: {cell(error_text(error))}", ""]
    return ["## Figure", "", f"![methods]({path.name})", ""]
