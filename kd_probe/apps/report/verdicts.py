"""The paper's hypotheses in ``kd-probe report``, answered as two questions that are never mixed (methods §5.5):

- **about distillation**: does the training procedure change the measure? A verdict from the seed pairs'
  differences (t-intervals, :func:`~kd_probe.core.uncertainty.seed_interval`), so it counts training-seed
  variance; it needs at least two seed pairs, and one seed pair gets no verdict;
- **about these runs**: do these trained networks differ on such images? The paired bootstrap over probe images,
  a statement about the runs at hand, worded as such ("differ as predicted"), never as "holds".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from kd_probe.apps.report.groups import weight_path_difference
from kd_probe.apps.report.sections import Evidence, format_value, with_interval
from kd_probe.apps.report.stats import Comparison
from kd_probe.core.uncertainty import LEVEL, images_needed, seed_interval, seed_pairs_needed, sign_test, verdict
from kd_probe.io.runs import METRICS

__all__ = ["HYPOTHESES", "VIEWS", "combined_word", "hypotheses", "hypothesis_verdict", "method_line", "verdicts"]

HYPOTHESES = (
    ("H1", "more foreground knowledge points and a higher foreground ratio", (("n_fg", 1), ("fg_ratio", 1))),
    (
        "H2",
        "lower D_mean and D_std: foreground knowledge learned with less weight travel and more at once",
        (("d_mean", -1), ("d_std", -1)),
    ),
    ("H3", "higher stability ρ: fewer knowledge points found and then dropped", (("rho", 1),)),
)
VIEWS = {"all": "all probe images", "effective": "effective images"}
_RUN_WORDS = {"holds": "as predicted", "opposite": "the other way", "not distinguishable": "not distinguishable"}


def method_line() -> str:
    """The report header's sentence naming the verdicts' level and method."""
    return (
        f"Verdicts about distillation: a t-interval over the seed pairs' differences (methods §5.8), at "
        f"{LEVEL:.0%} per hypothesis (its metrics' intervals Bonferroni-corrected); they need at least two seed "
        "pairs. Statements about these runs use the paired intervals over probe images and say nothing about "
        "distillation in general."
    )


def hypothesis_verdict(
    differences: Mapping[str, Sequence[float]], predictions: Sequence[tuple[str, int]]
) -> tuple[str, list[str]]:
    """The verdict about distillation on one hypothesis from each metric's seed-pair differences (distilled −
    baseline), and one detail per metric. Each metric's t-interval is at ``1 − α/m`` for ``m`` metrics, so the
    hypothesis claims a difference that is not there at most at level ``α``. Fewer than two seed pairs:
    ``"no verdict"``.

    Example::

        >>> hypothesis_verdict({"rho": [0.1, 0.12, 0.11]}, [("rho", 1)])[0]
        'holds'
    """
    level = 1 - (1 - LEVEL) / len(predictions)
    words, details = [], []
    for key, expected in predictions:
        found = seed_interval(differences[key], level=level)
        if found.images < 2:
            return "no verdict", []
        word = verdict(found, expected)
        words.append(word)
        needed = seed_pairs_needed(found) if word == "not distinguishable" else None
        extra = f" (≈ {needed} seed pairs would be needed at the observed effect and seed spread)" if needed else ""
        details.append(f"{dict(METRICS)[key]} {with_interval(key, found, found.estimate, signed=True)}: {word}{extra}")
    return combined_word(words), details


def verdicts(evidence: Evidence, views: dict) -> list[str]:
    """Per hypothesis: the verdict about distillation (from two seed pairs on) and what these runs show, on all
    probe images and on the effective images (``views``: the knowledge-point measures of each group)."""
    return hypotheses(evidence, views)[0]


def hypotheses(evidence: Evidence, views: dict) -> tuple[list[str], list[str]]:
    """The report's lines of :func:`verdicts` and one plain line per hypothesis for a console: its verdict about
    distillation and the word of these runs on all probe images (the effective images' word when it differs)."""
    pairs = len(evidence.pairs)
    lines, short = [], []
    apart = weight_path_difference([*evidence.distilled, *evidence.baseline])
    for label, claim, predictions in HYPOTHESES:
        lines.append(f"- **{label}** (distilled vs baseline: {claim}):")
        if apart and any(key in ("d_mean", "d_std") for key, _ in predictions):
            lines.append(f"  - not compared: {apart}")
            short.append(f"{label} ({claim.split(':')[0]}): not compared (D is summed differently in the runs)")
            continue
        about, these, short_claim = "no verdict from one seed pair (it needs at least 2)", {}, claim.split(":")[0]
        found = {
            view: {key: evidence.compare([m[key] for m in d], [m[key] for m in b]) for key, _ in predictions}
            for view, (d, b, _) in views.items()
            if d and b
        }
        if pairs < 2:
            lines.append(
                "  - about distillation: **no verdict** from one seed pair: a verdict needs the seed-to-seed spread, "
                "which one pair cannot show; run at least 2 seed pairs (3 or more for a useful interval)."
            )
        else:
            lines.append(f"  - about distillation ({pairs} seed pairs):")
            for view, (_, _, used) in views.items():
                if view not in found:
                    lines.append(f"    - {VIEWS[view]}: not available ({used}).")
                    continue
                differences = {key: found[view][key].pair_differences for key, _ in predictions}
                word, details = hypothesis_verdict(differences, predictions)
                if view == "all":
                    about = f"{word} ({pairs} seed pairs)"
                seeds = "; ".join(_seed_agreement(k, found[view][k], e) for k, e in predictions)
                lines.append(f"    - {VIEWS[view]} ({used}): **{word}** — {'; '.join(details)} ({seeds}).")
        lines.append("  - about these runs (do these networks differ on such images?):")
        for view, (d, b, used) in views.items():
            if view not in found:
                lines.append(f"    - {VIEWS[view]}: not available ({used}).")
                continue
            words, details = [], []
            for key, expected in predictions:
                word, detail = _runs_detail(key, expected, found[view][key], d, b)
                words.append(word)
                details.append(detail)
            combined = combined_word(words, yes="differ as predicted", no="differ the other way")
            lines.append(f"    - {VIEWS[view]} ({used}): **{combined}** — {'; '.join(details)}.")
            these[view] = combined
        runs = these.get("all", "not available")
        if "effective" in these and these["effective"] != runs:
            runs += f" (effective images: {these['effective']})"
        short.append(f"{label} ({short_claim}): about distillation, {about}; these runs: {runs}")
    return lines, short


def _runs_detail(key: str, expected: int, found: Comparison, d: list, b: list) -> tuple[str, str]:
    """One metric's statement about these runs: both groups' values, the difference with its paired interval
    over probe images, and its word (or how many images the observed effect would need)."""
    distilled = statistics.fmean(m[key].estimate for m in d)
    baseline = statistics.fmean(m[key].estimate for m in b)
    shown = with_interval(key, found.difference, distilled - baseline, signed=True)
    head = f"{dict(METRICS)[key]} {format_value(key, distilled)} vs {format_value(key, baseline)}, difference {shown}"
    if found.difference is None or not math.isfinite(found.difference.low):
        return "undetermined", f"{head}: undetermined (no per-image data behind it)"
    word = verdict(found.difference, expected)
    if word != "not distinguishable":
        return word, f"{head}: {_RUN_WORDS[word]}"
    needed = images_needed(found.difference)
    why = "no observed difference" if needed is None else f"≈ {needed} images would be needed at the observed effect"
    return word, f"{head}: not distinguishable ({why})"


def _seed_agreement(key: str, found: Comparison, expected: int) -> str:
    """How many seed pairs differ in the predicted direction, and the sign test's p-value from 3 pairs on."""
    pairs = len(found.pair_differences)
    agreeing = sum(1 for difference in found.pair_differences if difference * expected > 0)
    test = f", sign test p = {sign_test(agreeing, pairs):.2g}" if pairs >= 3 else ""
    return f"{dict(METRICS)[key]}: {agreeing}/{pairs} seed pairs in the predicted direction{test}"


def combined_word(words: list[str], yes: str = "holds", no: str = "does not hold (the opposite direction)") -> str:
    """One word for a hypothesis from its metrics' words."""
    found = set(words)
    if found == {"holds"}:
        return yes
    if found == {"opposite"}:
        return no
    if {"holds", "opposite"} <= found:
        return "mixed"
    if "undetermined" in found:
        return "undetermined"
    if found == {"not distinguishable"}:
        return "not distinguishable from no difference at this sample size"
    decided = yes if "holds" in found else no
    return f"partly: {decided} for some metrics, the others not distinguishable from no difference"
