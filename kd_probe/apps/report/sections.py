"""The tables of ``kd-probe report``: each number with its 95 % interval, each difference with a paired one.

Built on :mod:`kd_probe.apps.report.stats` (what each number rests on) and :mod:`kd_probe.core.uncertainty`
(intervals, verdicts); :mod:`kd_probe.apps.report.write` puts the sections together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kd_probe.apps.report.stats import (
    MIN_FOOLED,
    Comparison,
    Measure,
    agreement_measures,
    compare,
    group_interval,
    unicam_measures,
)
from kd_probe.core.uncertainty import Interval
from kd_probe.io.runs import AGREEMENT, RunSummary

__all__ = [
    "COLUMNS",
    "UNICAM",
    "Evidence",
    "agreement_section",
    "cell",
    "comparison_line",
    "comparison_rows",
    "digest_line",
    "format_value",
    "not_probed",
    "section",
    "side_rows",
    "signed_value",
    "teacher_side",
    "unicam_section",
    "with_interval",
]

COLUMNS = ["metric", "distilled", "baseline", "these runs: distilled − baseline", "distillation's effect (seed pairs)"]
UNICAM = (  # [UC]'s scores at the last UniCAMProbe probe (history key prefix, label)
    ("fss", "FSS"),
    ("fss_v", "FSS (V)"),
    ("rs/teacher", "RS teacher"),
    ("rs/student", "RS student"),
    ("rs/distilled", "RS distilled"),
    ("rs/residual", "RS residual"),
)
_OWN = ("run's", "runs'")  # one run's values, several runs' values
TEACHER_SIDE = ("teacher_fooling_rate/", "teacher_fooled/", "rs/teacher/", "cam_energy_in_mask/teacher")


def teacher_side(key: str) -> bool:
    """Whether a measure is the teacher's own (its fooling rate, its RS, its CAM's energy or invariance), the same in
    both runs of a seed pair when they share the teacher and the probe images."""
    return key.startswith(TEACHER_SIDE) or (key.startswith("invariance/") and key.endswith("/teacher"))


@dataclass
class Evidence:
    """The runs of a report, their seed pairs (indices into ``distilled`` and ``baseline``) and the bootstrap
    settings every interval uses."""

    distilled: list[RunSummary]
    baseline: list[RunSummary]
    pairs: list[tuple[int, int]]
    resamples: int
    seed: int = 0

    def compare(self, distilled: Sequence[Measure], baseline: Sequence[Measure]) -> Comparison:
        return compare(distilled, baseline, self.pairs, resamples=self.resamples, seed=self.seed)


def format_value(key: str, value: float) -> str:
    """A number as the report shows it: accuracy as a percentage, others to three significant digits."""
    if not math.isfinite(value):
        return "–"
    return f"{value:.1%}" if key == "accuracy" else f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"


def signed_value(key: str, value: float) -> str:
    """A difference as the report shows it: :func:`format_value` with its sign."""
    text = format_value(key, value)
    return text if text == "–" or text.startswith("-") else f"+{text}"


def with_interval(key: str, found: Interval | None, estimate: float, *, signed: bool = False) -> str:
    """``estimate [low, high]`` (the interval left out when there is none)."""
    show = signed_value if signed else format_value
    if found is None or not (math.isfinite(found.low) and math.isfinite(found.high)):
        return show(key, estimate)
    return f"{show(key, estimate)} [{show(key, found.low)}, {show(key, found.high)}]"


def cell(text: str) -> str:
    """Text from a file as one markdown table cell or list item: no line breaks, no column separators, no markup
    (``<``, ``>`` and ``&`` escaped, so no text becomes HTML in report.md), at most 300 characters.

    Example::

        >>> cell("a  <b>\\n c")
        'a &lt;b&gt; c'
    """
    text = " ".join(text.split())
    text = text if len(text) <= 300 else f"{text[:297]}..."
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def section(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown section with one table."""
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def comparison_rows(
    evidence: Evidence, measures: tuple[list[dict[str, Measure]], list[dict[str, Measure]]], metrics: Sequence[Any]
) -> list[list[str]]:
    """Rows of :data:`COLUMNS` with intervals, for ``(key, label)`` metrics: each group, the difference of these
    runs (paired over probe images) and distillation's effect (a t-interval over seed pairs, from two on)."""
    rows = []
    for key, label in metrics:
        distilled = [m[key] for m in measures[0] if key in m]
        baseline = [m[key] for m in measures[1] if key in m]
        if not distilled or not baseline:
            continue
        found = evidence.compare(distilled, baseline)
        rows.append(_row(key, label, found, distilled, baseline))
    return rows


def comparison_line(
    evidence: Evidence, measures: tuple[list[dict[str, Measure]], list[dict[str, Measure]]], key: str, label: str
) -> str | None:
    """One plain line for a console: both groups' values, the difference of these runs with its paired interval
    and, from two seed pairs on, distillation's effect; ``None`` when a group has no value."""
    rows = comparison_rows(evidence, measures, [(key, label)])
    if not rows:
        return None
    distilled, baseline = (_mean([m[key].estimate for m in group if key in m]) for group in measures)
    line = f"{label} {format_value(key, distilled)} vs {format_value(key, baseline)}, difference {rows[0][3]}"
    return line + (f"; distillation's effect {rows[0][4]}" if len(evidence.pairs) >= 2 else "")


def _row(key: str, label: str, found: Comparison, distilled: list[Measure], baseline: list[Measure]) -> list[str]:
    d, b = _mean([m.estimate for m in distilled]), _mean([m.estimate for m in baseline])
    difference = _mean(list(found.pair_differences)) if found.pair_differences else d - b
    shown = with_interval(key, found.difference, difference, signed=True)
    if found.difference is not None and found.difference.low == found.difference.high == difference == 0:
        shown = "0 (the same values: the teacher's side)" if teacher_side(key) else "0 (the same values in both runs)"
    seeds = found.seeds
    effect = with_interval(key, seeds, seeds.estimate, signed=True) if seeds.images >= 2 else "needs ≥ 2 seed pairs"
    return [label, with_interval(key, found.distilled, d), with_interval(key, found.baseline, b), shown, effect]


# ------------------------------------------------------------------------------------------- runs not probed alike
def unprobed_sentence(
    groups: Sequence[tuple[str, Sequence[RunSummary]]], probed: Sequence[bool], probe: str, purpose: str
) -> str | None:
    """One sentence naming the runs of each group (``(name, runs)``) that were not probed with ``probe``
    (``probed``: per run, in the groups' order), or ``None`` when every run or none was."""
    if all(probed) or not any(probed):
        return None
    flags = iter(probed)
    named, whole, count = [], False, 0
    for name, runs in groups:
        missing = [run.name for run in runs if not next(flags)]
        if missing:
            whole |= len(missing) == len(runs)
            count += len(missing)
            named.append(f"the {name} run{'s' if len(missing) > 1 else ''} ({', '.join(map(cell, missing))})")
    why = "there is nothing to compare" if whole else "the groups are not compared (that needs the probe in every run)"
    text = (
        f"{' and '.join(named)} {'were' if count > 1 else 'was'} not probed with {probe}, so {why}; add one to "
        f"{'their' if count > 1 else 'its'} Trainer to compare {purpose}."
    )
    return text[0].upper() + text[1:]


def not_probed(
    title: str, evidence: Evidence, measures: tuple[list[dict[str, Measure]], list[dict[str, Measure]]], how: tuple
) -> list[str] | None:
    """A comparison section whose runs were not all probed alike: its title, the sentence of
    :func:`unprobed_sentence` and, when one group was probed in every run and the other in none, that group's own
    values without a comparison (``how``: the probe, what it compares and the ``(key, label)`` metrics). ``None``
    when every run was probed (compare them), ``[]`` when none was (no section)."""
    probe, purpose, metrics = how
    probed = [bool(m) for group in measures for m in group]
    if all(probed):
        return None
    groups = (("distilled", evidence.distilled), ("baseline", evidence.baseline))
    sentence = unprobed_sentence(groups, probed, probe, purpose)
    if sentence is None:
        return []
    lines = [f"## {title}", "", sentence, ""]
    sides = [side for side, group in enumerate(measures) if group and all(group)]
    if len(sides) == 1 and not any(measures[1 - sides[0]]):
        rows = side_rows(evidence, measures[sides[0]], metrics)
        column, runs = groups[sides[0]]
        if rows:
            lines += [
                f"The {column} {_OWN[len(runs) > 1]} own values, without a comparison:",
                "",
                f"| measure | {column} |",
                "|---|---|",
            ]
            lines += [f"| {label} | {value} |" for label, value in rows] + [""]
    return lines


def side_rows(evidence: Evidence, measures: list[dict[str, Measure]], metrics: Sequence[Any]) -> list[list[str]]:
    """``[label, value with its interval]`` of one group for each ``(key, label)`` metric its runs have; an
    adversarial transfer from fewer than ``MIN_FOOLED`` teacher-fooled images is shown as such."""
    rows = []
    for key, label in metrics:
        found = [m[key] for m in measures if key in m]
        if not found:
            continue
        fooled = [m[key.replace("adv_transfer/", "teacher_fooled/")].estimate for m in measures if key in m]
        if key.startswith("adv_transfer/") and not min(fooled) >= MIN_FOOLED:
            counts = ", ".join(f"{n:.0f}" for n in fooled)
            rows.append([label, f"too few: {counts} teacher-fooled images (< {MIN_FOOLED})"])
            continue
        estimate = _mean([m.estimate for m in found])
        rows.append([label, with_interval(key, group_interval(found, evidence.resamples, evidence.seed), estimate)])
    return rows


def digest_line(digest: list[str] | None, what: str, partial: list[str] | None, line: str | None) -> None:
    """Append a section's line for a console to ``digest``: its key comparison ``line`` or, when the section is
    ``partial`` (its title, a blank line, why the runs are not compared, ...), why not."""
    if digest is None or partial == []:
        return
    if partial is not None:
        why = partial[2].removeprefix("- ")
        digest.append(f"{what}: {why[0].lower()}{why[1:]}")
    elif line is not None:
        digest.append(f"{what}: {line}")


# ------------------------------------------------------------------------------------------------------ agreement
def _eps_label(key: str) -> str:
    return f"ε = {key.removeprefix('eps_')}/255"


def agreement_section(evidence: Evidence, digest: list[str] | None = None) -> list[str]:
    """[WK]'s agreement with the teacher at the last probe: per-image scores with intervals, the teacher's fooling
    rate and the images behind every adversarial transfer (older runs: the logged scalars, no intervals).
    ``digest``: gets one plain line (the CAM cosine, or why the runs are not compared)."""
    runs = [*evidence.distilled, *evidence.baseline]
    records = [run.agreement for run in runs]
    if not any(records):
        return _scalar_agreement(runs)
    measures = [agreement_measures(record) if record else {} for record in records]
    split = len(evidence.distilled)
    groups = (measures[:split], measures[split:])
    names = sorted({key for m in measures for key in m if not key.startswith(("adv_", "teacher_"))})
    labels = dict(AGREEMENT)
    eps_keys: list[str] = next((record["eps_keys"] for record in records if record), [])
    title = "Agreement with the teacher (what gets distilled, last probe)"
    metrics = [(name, labels.get(name, name)) for name in names]
    for eps in eps_keys:
        metrics += [(f"teacher_fooling_rate/{eps}", f"teacher fooled, {_eps_label(eps)}")]
        metrics += [(f"adv_transfer/{eps}", f"adversarial transfer, {_eps_label(eps)}")]
    partial = not_probed(title, evidence, groups, ("an AgreementProbe", "agreement with the teacher", metrics))
    line = comparison_line(evidence, groups, "cam_cosine", "CAM cosine") if partial is None else None
    digest_line(digest, "agreement with the teacher", partial, line)
    if partial is not None:
        return partial
    rows = comparison_rows(evidence, groups, [(name, labels.get(name, name)) for name in names])
    for eps in eps_keys:
        rows += comparison_rows(
            evidence, groups, [(f"teacher_fooling_rate/{eps}", f"teacher fooled, {_eps_label(eps)}")]
        )
        rows += _transfer_rows(evidence, groups, eps)
    lines = section(title, ["score", *COLUMNS[1:]], rows)
    images = next((int(record["labels"].numel()) for record in records if record), 0)
    return [
        *lines,
        f"{images} probe images. Adversarial transfer = share of the teacher-fooling I-FGSM images that also fool the "
        f"student; a transfer from fewer than {MIN_FOOLED} teacher-fooled images is shown as such, not as a number.",
        "",
    ]


def _transfer_rows(
    evidence: Evidence, groups: tuple[list[dict[str, Measure]], list[dict[str, Measure]]], eps: str
) -> list[list[str]]:
    """Adversarial transfer at one ε; a side whose runs have fewer than ``MIN_FOOLED`` teacher-fooled images
    shows that count instead of a number, and then the difference is left out."""
    key, label = f"adv_transfer/{eps}", f"adversarial transfer, {_eps_label(eps)}"
    rows = comparison_rows(evidence, groups, [(key, label)])
    if not rows:
        return []
    row = rows[0]
    fooled = [[m[f"teacher_fooled/{eps}"].estimate for m in group if key in m] for group in groups]
    few = [min(group) < MIN_FOOLED for group in fooled]
    for side, group in enumerate(fooled):
        counts = ", ".join(f"{n:.0f}" for n in group)
        row[1 + side] = (
            f"too few: {counts} teacher-fooled images (< {MIN_FOOLED})"
            if few[side]
            else f"{row[1 + side]}; {counts} fooled"
        )
    if any(few):
        row[3] = row[4] = "–"
    return rows


def _scalar_agreement(runs: list[RunSummary]) -> list[str]:
    """Runs without the AgreementProbe's file (older runs): the last logged values, without intervals."""
    if not any(
        math.isfinite(run.metrics.get(f"agreement/{suffix}", math.nan)) for run in runs for suffix, _ in AGREEMENT
    ):
        return []
    rows = [
        [cell(run.name), *(format_value("", run.metrics.get(f"agreement/{s}", math.nan)) for s, _ in AGREEMENT)]
        for run in runs
    ]
    return section(
        "Agreement with the teacher (what gets distilled, last probe; no per-image file, so no intervals)",
        ["run", *(label for _, label in AGREEMENT)],
        rows,
    )


# -------------------------------------------------------------------------------------------------------- UniCAM
def _unicam_layers(run: RunSummary) -> list[str]:
    record = run.unicam
    return [pair[0] for pair in record["layers"]] if record else []


def unicam_section(evidence: Evidence, digest: list[str] | None = None) -> list[str]:
    """FSS and RS of distilled vs baseline per layer with intervals (bootstrap over the probe batch) and one
    line on the deepest layer whose words follow the intervals; ``digest``: gets one plain line (FSS at the
    deepest layer, or why the runs are not compared)."""
    runs = [*evidence.distilled, *evidence.baseline]
    layers = next((names for names in map(_unicam_layers, runs) if names), [])
    if not layers:
        return []
    measures = [unicam_measures(run.unicam) if run.unicam and _unicam_layers(run) else {} for run in runs]
    split = len(evidence.distilled)
    groups = (measures[:split], measures[split:])
    title = "What the student holds of the teacher (UniCAM: FSS and RS, last probe)"
    metrics = [(f"{key}/{layer}", f"{layer} {label}") for layer in layers for key, label in UNICAM]
    partial = not_probed(title, evidence, groups, ("a UniCAMProbe", "what the students hold of the teacher", metrics))
    line = comparison_line(evidence, groups, f"fss/{layers[-1]}", f"FSS at {layers[-1]}") if partial is None else None
    digest_line(digest, "UniCAM", partial, line)
    if partial is not None:
        return partial
    rows, found = [], {}
    for layer in layers:
        for key, label in UNICAM:
            row = comparison_rows(evidence, groups, [(f"{key}/{layer}", f"{layer} {label}")])
            rows += row
            distilled = [m[f"{key}/{layer}"] for m in groups[0] if f"{key}/{layer}" in m]
            baseline = [m[f"{key}/{layer}"] for m in groups[1] if f"{key}/{layer}" in m]
            if distilled and baseline:
                found[key, layer] = evidence.compare(distilled, baseline)
    record = next(run.unicam for run in runs if run.unicam)
    features = record.get("features", "pooled")
    rows_note = " with L2-normalised rows (the authors' FSS (V))" if record.get("normalize_rows") else ""
    lines = section(title, ["layer and score", *COLUMNS[1:]], rows)
    deepest = layers[-1]

    def compare_words(key: str, more: str, less: str, seeds: bool = False) -> str:
        result = found.get((key, deepest))
        shown_interval = None if result is None else result.seeds if seeds else result.difference
        if result is None or shown_interval is None:
            return "undetermined (no values)"
        word = {1: more, -1: less}.get(shown_interval.direction(), "not distinguishable from the baseline's")
        shown = with_interval("", shown_interval, _mean(list(result.pair_differences)), signed=True)
        return f"{word} ({UNICAM_LABELS[key]} difference {shown})"

    def sentence(seeds: bool) -> str:
        return (
            f"the distilled student's features are "
            f"{compare_words('fss', 'closer to the teacher', 'further from the teacher', seeds)}; its label-relevant "
            f"knowledge beyond the teacher is {compare_words('rs/distilled', 'larger', 'smaller', seeds)}; the "
            f"teacher's label-relevant knowledge it lacks is {compare_words('rs/residual', 'larger', 'smaller', seeds)}"
        )

    pairs = len(evidence.pairs)
    effect = (
        f" Over the {pairs} seed pairs (distillation's effect), {sentence(True)}."
        if pairs >= 2
        else " One seed pair says nothing about distillation in general."
    )
    lines += [
        f"Features: {features}{rows_note}. In these runs, at {deepest}, {sentence(False)}.{effect} FSS = "
        "R*(teacher, student) features; RS = R*(features, labels); distilled = R*(student | teacher, labels); "
        "residual = R*(teacher | student, labels) (bias-corrected squared distance correlations on the probe "
        "batch; intervals resample the batch's images).",
        "",
    ]
    return lines


UNICAM_LABELS = dict(UNICAM)
