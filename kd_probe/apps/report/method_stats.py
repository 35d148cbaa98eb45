"""The numbers behind ``kd-probe report`` on several KD methods (methods §5.9): every method's difference from
the one no-teacher baseline on every measure, at both levels of methods §5.5 — *these runs* (the paired
bootstrap over probe images) and *distillation's effect* (the t-interval over seed pairs) — with the
multiple comparisons accounted for.

**Families.** Each measure is one family: its ``m`` comparisons, one per method against the baseline. The
intervals are simultaneous over the family (Bonferroni: each at level ``1 − α/m``), and a difference is
*flagged* where Holm's step-down procedure rejects "no difference" at family-wise level ``α = 5 %``
(:func:`~kd_probe.core.uncertainty.holm`; Holm rejects whenever the Bonferroni interval excludes 0, and
sometimes more). A hypothesis H1–H3 is one family over the methods and its metrics. A ranking compares the
leading method with each other one, Bonferroni over those ``m − 1`` comparisons.

:mod:`kd_probe.apps.report.methods` writes these numbers as report.md's sections.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from kd_probe.apps.report.stats import (
    MIN_FOOLED,
    Measure,
    agreement_measures,
    knowledge_point_measures,
    paired_replicates,
    unicam_measures,
)
from kd_probe.core.uncertainty import (
    LEVEL,
    Interval,
    bootstrap_p_value,
    holm,
    interval,
    seed_interval,
    seed_p_value,
)
from kd_probe.io.runs import RunSummary

__all__ = [
    "ALPHA",
    "Cell",
    "Column",
    "MethodEvidence",
    "Ranking",
    "columns",
    "compare_groups",
    "evidence_of",
    "holm_family_note",
    "hypothesis_words",
    "method_cells",
    "ranking",
    "run_measures",
]

ALPHA = 1 - LEVEL
KNOWLEDGE = (
    ("accuracy", "accuracy", 1),
    ("n_fg", "N_fg", 1),
    ("n_bg", "N_bg", 0),
    ("fg_ratio", "fg_ratio", 1),
    ("d_mean", "D_mean", -1),
    ("d_std", "D_std", -1),
    ("rho", "ρ", 1),
)
UNICAM_SCORES = (("fss", "FSS"), ("rs/distilled", "RS distilled"), ("rs/residual", "RS residual"))


@dataclass(frozen=True)
class Column:
    """One measure of the comparison: its key among a run's measures, its label, its table (``"knowledge"`` or
    ``"teacher"``) and the direction a ranking prefers (+1 higher, −1 lower, 0 none)."""

    key: str
    label: str
    table: str
    better: int = 0


@dataclass
class Cell:
    """One method × one measure: the mean over seed pairs of method − baseline and, at each level, its interval
    (simultaneous over the measure's family), its p-value and the Holm flag (+1 above, −1 below 0, 0 none)."""

    estimate: float
    pairs: int
    runs: Interval | None = None
    runs_p: float = math.nan
    seeds: Interval | None = None
    seeds_p: float = math.nan
    runs_flag: int = 0
    seeds_flag: int = 0
    note: str = ""  # why there is no test (too few teacher-fooled images)


@dataclass
class MethodEvidence:
    """The runs of a method comparison: each method's distilled runs, the baseline runs, every run's measures
    (by ``id(run)``) and the bootstrap settings."""

    methods: dict[str, list[RunSummary]]
    baseline: list[RunSummary]
    measures: dict[int, dict[str, Measure]]
    resamples: int
    seed: int = 0
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)

    def pairs(self, first: Sequence[RunSummary], second: Sequence[RunSummary]) -> list[tuple[int, int]]:
        """Seed pairs as indices into the two lists."""
        by_seed = {run.seed: index for index, run in enumerate(second)}
        return [(index, by_seed[run.seed]) for index, run in enumerate(first) if run.seed in by_seed]

    def of(self, runs: Sequence[RunSummary], key: str) -> list[Measure]:
        return [self.measures[id(run)].get(key, Measure(math.nan)) for run in runs]

    @property
    def seed_pairs(self) -> int:
        """The fewest seed pairs any method has with the baseline."""
        return min((len(self.pairs(runs, self.baseline)) for runs in self.methods.values()), default=0)


def run_measures(run: RunSummary, knowledge: dict[str, Measure] | None = None) -> dict[str, Measure]:
    """Every measure of one run: test accuracy (no per-image data), the knowledge-point measures on all probe
    images (``knowledge`` when already computed, with their bootstrap replicates), the agreement scores and, at the
    deepest UniCAM layer, FSS and RS (``fss``, ``rs/distilled``, ...)."""
    measures: dict[str, Measure] = {"accuracy": Measure(run.metrics.get("accuracy", math.nan))}
    measures.update(knowledge_point_measures(run.history) if knowledge is None else knowledge)
    if run.agreement:
        measures.update(agreement_measures(run.agreement))
    if run.unicam:
        layers = [pair[0] for pair in run.unicam.get("layers", [])]
        scores = unicam_measures(run.unicam)
        for key, _ in UNICAM_SCORES:
            if layers and f"{key}/{layers[-1]}" in scores:
                measures[key] = scores[f"{key}/{layers[-1]}"]
    return measures


def evidence_of(
    methods: dict[str, list[RunSummary]],
    baseline: list[RunSummary],
    resamples: int,
    seed: int = 0,
    knowledge: dict[int, dict[str, Measure]] | None = None,
) -> MethodEvidence:
    """The evidence of a comparison, every run's measures read once (``knowledge``: runs' knowledge-point
    measures already computed, by ``id(run)``)."""
    runs = [*baseline, *(run for group in methods.values() for run in group)]
    known = knowledge or {}
    measures = {id(run): run_measures(run, known.get(id(run))) for run in runs}
    return MethodEvidence(methods, baseline, measures, resamples, seed)


def columns(evidence: MethodEvidence) -> list[Column]:
    """The measures some run of every group has, in the report's order: accuracy and knowledge points; CAM
    agreement, adversarial transfer per ε, invariance; FSS and RS at the deepest UniCAM layer."""
    present = [set(measures) for measures in evidence.measures.values()]
    found = [Column(key, label, "knowledge", better) for key, label, better in KNOWLEDGE]
    agreement = sorted({key for keys in present for key in keys if key.startswith(("adv_transfer/", "invariance/"))})
    found += [Column("cam_cosine", "CAM cosine", "teacher", 1)]
    found += [Column("cam_energy_in_mask/student", "CAM energy on object", "teacher", 1)]
    for key in agreement:
        if key.startswith("adv_transfer/"):
            found.append(Column(key, f"adv. transfer ε={key.removeprefix('adv_transfer/eps_')}/255", "teacher", 1))
    for key in agreement:
        if key.startswith("invariance/"):
            found.append(Column(key, f"{key.split('/')[1]} invariance", "teacher", 1))
    found += [Column(key, label, "teacher", 1 if key == "fss" else 0) for key, label in UNICAM_SCORES]
    groups = [evidence.baseline, *evidence.methods.values()]
    return [c for c in found if all(any(c.key in evidence.measures[id(r)] for r in runs) for runs in groups)]


def _too_few(evidence: MethodEvidence, runs: Sequence[RunSummary], key: str) -> str:
    """Why an adversarial transfer is not compared: fewer than ``MIN_FOOLED`` teacher-fooled images in a run."""
    if not key.startswith("adv_transfer/"):
        return ""
    fooled_key = key.replace("adv_transfer/", "teacher_fooled/")
    counts = [m.estimate for m in evidence.of([*runs, *evidence.baseline], fooled_key)]
    few = [count for count in counts if not count >= MIN_FOOLED]
    return f"too few: {min(few):.0f} teacher-fooled images (< {MIN_FOOLED})" if few else ""


def compare_groups(
    evidence: MethodEvidence, first: Sequence[RunSummary], second: Sequence[RunSummary], key: str, family: int
) -> Cell:
    """``first − second`` on ``key`` over their seed pairs, each level's interval at ``1 − α/family``."""
    pairs = evidence.pairs(first, second)
    combined, estimates, _, images = paired_replicates(
        evidence.of(first, key), evidence.of(second, key), pairs, evidence.resamples, evidence.seed
    )
    finite = [e for e in estimates if math.isfinite(e)]
    estimate = sum(finite) / len(finite) if finite else math.nan
    level = 1 - ALPHA / max(family, 1)
    found = Cell(estimate, len(pairs), seeds=seed_interval(estimates, level=level), seeds_p=seed_p_value(estimates))
    if combined is not None and images >= 1 and math.isfinite(estimate):
        found.runs = interval(estimate, combined, images=images, level=level)
        found.runs_p = bootstrap_p_value(combined, images=images)
    return found


def method_cells(evidence: MethodEvidence, measures: Sequence[Column]) -> dict[tuple[str, str], Cell]:
    """Every method's cell on every measure (also kept in ``evidence.cells``), with the Holm flags of each
    measure's family at both levels."""
    family = len(evidence.methods)
    for column in measures:
        found = {}
        for method, runs in evidence.methods.items():
            cell = compare_groups(evidence, runs, evidence.baseline, column.key, family)
            cell.note = _too_few(evidence, runs, column.key)
            if cell.note:
                cell.runs, cell.runs_p, cell.seeds_p = None, math.nan, math.nan
                cell.seeds = None
            found[method] = cell
        for level in ("runs", "seeds"):
            rejected = holm([getattr(cell, f"{level}_p") for cell in found.values()])
            for cell, flag in zip(found.values(), rejected, strict=True):
                setattr(cell, f"{level}_flag", _sign(cell.estimate) if flag else 0)
        evidence.cells.update({(method, column.key): cell for method, cell in found.items()})
    return evidence.cells


def _sign(value: float) -> int:
    return 1 if value > 0 else -1 if value < 0 else 0


def hypothesis_words(
    evidence: MethodEvidence, predictions: Sequence[tuple[str, int]], level: str
) -> dict[str, list[str]]:
    """Per method, one word per metric of a hypothesis (``"holds"``, ``"opposite"``, ``"not distinguishable"``,
    ``"undetermined"``), Holm over the family of every method × metric at ``level`` (``"seeds"`` or
    ``"runs"``); needs :func:`method_cells` first."""
    keys = [(method, key) for method in evidence.methods for key, _ in predictions]
    p_values = [getattr(evidence.cells[k], f"{level}_p") if k in evidence.cells else math.nan for k in keys]
    rejected = dict(zip(keys, holm(p_values), strict=True))
    expected = dict(predictions)
    words: dict[str, list[str]] = {method: [] for method in evidence.methods}
    for (method, key), p in zip(keys, p_values, strict=True):
        if math.isnan(p):
            words[method].append("undetermined")
        elif rejected[method, key]:
            same = _sign(evidence.cells[method, key].estimate) == expected[key]
            words[method].append("holds" if same else "opposite")
        else:
            words[method].append("not distinguishable")
    return words


@dataclass
class Ranking:
    """Which method leads on one measure, and how it compares with each other method at ``level``."""

    column: Column
    level: str  # "seeds" or "runs"
    order: list[tuple[str, float]]  # methods by their difference from the baseline, the leader first
    ahead_of: list[str]
    not_told_apart: list[str]
    untested: list[str]


def ranking(evidence: MethodEvidence, column: Column) -> Ranking | None:
    """The methods ordered on ``column`` (its preferred direction), and the leader compared with each other
    method over their seed pairs (methods of one seed pair at the same seed are paired): intervals at
    ``1 − α/(k − 1)`` for ``k`` methods; ``None`` when fewer than two methods have a value."""
    level = "seeds" if evidence.seed_pairs >= 2 else "runs"
    values = [
        (method, cell.estimate)
        for method in evidence.methods
        if (cell := evidence.cells.get((method, column.key))) is not None
        and math.isfinite(cell.estimate)
        and not cell.note
    ]
    if len(values) < 2 or not column.better:
        return None
    order = sorted(values, key=lambda item: -column.better * item[1])
    leader = order[0][0]
    found = Ranking(column, level, order, [], [], [])
    for method, _ in order[1:]:
        cell = compare_groups(evidence, evidence.methods[leader], evidence.methods[method], column.key, len(order) - 1)
        shown = cell.seeds if level == "seeds" else cell.runs
        if shown is None or not math.isfinite(shown.low):
            found.untested.append(method)
        elif shown.direction() == column.better:
            found.ahead_of.append(method)
        else:
            found.not_told_apart.append(method)
    return found


def holm_family_note(methods: int) -> str:
    """The report's sentence on how intervals and flags account for comparing ``methods`` methods."""
    level = 1 - ALPHA / max(methods, 1)
    return (
        f"Multiple comparisons: each measure is one family of {methods} comparisons (one per method against the "
        f"baseline). Its intervals are simultaneous (Bonferroni, each at {level:.2%}), and a difference is "
        f"flagged (▲ above, ▼ below the baseline) where Holm's step-down procedure rejects no difference at a "
        f"family-wise level of {ALPHA:.0%} (methods §5.9); Holm tests a family's later comparisons less strictly "
        "than Bonferroni, so a flagged cell's interval may still touch 0."
    )
