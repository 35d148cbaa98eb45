"""What each number of ``kd-probe report`` rests on: per-image statistics of a run and their bootstrap intervals.

A :class:`Measure` is one metric of one run: its estimate and, where the run's files hold per-image values,
a :data:`~kd_probe.core.uncertainty.Statistic` over resampled probe images. :func:`compare` turns the
measures of the distilled and baseline runs into intervals for each group and a paired interval for their
difference (runs probed on the same images share resamples; the seed pairs are fixed), and the seed-level
t-interval of the seed pairs' differences (methods §5.8).

Knowledge-point metrics come in two views: **all** probe images (those with ``σ_f > 0`` at the last
checkpoint, as the probe's own summary) and **effective** images, the reference code's filter (methods §1.3:
``σ_f > 0`` at every checkpoint and foreground entropy at most the background's at late checkpoints, epochs
≥ 40/150 of the run), intersected over every compared run and recounted on that set as the authors did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kd_probe.core.distance_correlation import correlation_of_distances, relevance_given_of_distances
from kd_probe.core.dynamics import image_stability, travel_until_learned
from kd_probe.core.knowledge_points import count_knowledge_points, effective_images, image_foreground_ratios
from kd_probe.core.uncertainty import (
    RESAMPLES,
    Interval,
    Statistic,
    bootstrap_replicates,
    interval,
    mean_over_units,
    seed_interval,
)

__all__ = [
    "LATE",
    "MIN_FOOLED",
    "Comparison",
    "Measure",
    "agreement_measures",
    "compare",
    "effective_keep",
    "group_interval",
    "knowledge_point_measures",
    "paired_replicates",
    "unicam_measures",
]

LATE = 40 / 150  # the paper's late checkpoints: epochs ≥ 40 of 150
MIN_FOOLED = 10  # an adversarial transfer from fewer teacher-fooled images is shown as such, not as a number


@dataclass
class Measure:
    """One metric of one run: ``estimate`` and, when per-image data exists, ``statistic`` over ``images`` probe
    images; runs whose ``key`` is equal (and not ``None``) were probed on the same images, image by image."""

    estimate: float
    statistic: Statistic | None = None
    images: int = 0
    key: Any = None
    half: bool = False  # resample half-samples of distinct images (batch statistics: distance correlations)
    _replicates: dict[tuple[int, int], Tensor] = field(default_factory=dict, repr=False)

    def replicates(self, resamples: int, seed: int) -> Tensor | None:
        """The bootstrap replicates (computed once per ``(resamples, seed)``), or ``None`` without per-image data."""
        if self.statistic is None or self.images < (8 if self.half else 2):
            return None
        if (resamples, seed) not in self._replicates:
            replicates = bootstrap_replicates(
                self.statistic, self.images, resamples=resamples, seed=seed, half=self.half
            )
            if self.half:  # centred on the estimate: a V-statistic's half-samples sit higher than the full sample
                replicates = replicates - (replicates.nanmedian() - self.estimate)
            self._replicates[resamples, seed] = replicates
        return self._replicates[resamples, seed]

    def interval(self, resamples: int = RESAMPLES, seed: int = 0) -> Interval | None:
        replicates = self.replicates(resamples, seed)
        return None if replicates is None else interval(self.estimate, replicates, images=self.images)


def _measure(statistic: Statistic, images: int, key: Any) -> Measure:
    """The measure whose estimate is the statistic on every image once."""
    estimate = float(statistic(torch.arange(images)[None])[0]) if images else math.nan
    return Measure(estimate, statistic, images, key)


def _mean(values: Tensor, key: Any) -> Measure:
    values = values.detach().double().cpu()
    return _measure(lambda indices: values[indices].nanmean(dim=-1), values.numel(), key)


def _spread(values: Tensor, key: Any) -> Measure:
    values = values.detach().double().cpu()
    return _measure(lambda indices: values[indices].std(dim=-1, unbiased=False), values.numel(), key)


def _ratio(hits: Tensor, tries: Tensor, key: Any) -> Measure:
    """``Σ hits / Σ tries`` over the images (NaN when no image tried), e.g. adversarial transfer."""
    hits, tries = hits.double().cpu(), tries.double().cpu()

    def statistic(indices: Tensor) -> Tensor:
        total = tries[indices].sum(dim=-1)
        return torch.where(total > 0, hits[indices].sum(dim=-1) / total.clamp(min=1), math.nan)

    return _measure(statistic, hits.numel(), key)


# ----------------------------------------------------------------------------------------------- knowledge points
def _done(history: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in history["entries"] if e.get("failed") is None and "entropy" in e and "n_fg" in e]


def _late(entries: list[dict[str, Any]]) -> Tensor:
    last = entries[-1]["epoch"]
    return torch.tensor([entry["epoch"] >= LATE * last for entry in entries])


def effective_keep(histories: Sequence[dict[str, Any]]) -> Tensor | str:
    """The images effective in every run (methods §1.3, the reference code's filter), ``[N]`` bool; or, when the
    runs were not probed on the same images, a sentence saying so."""
    masks = [history["masks"] for history in histories]
    if any(m.shape != masks[0].shape or not torch.equal(m, masks[0]) for m in masks[1:]):
        return "the runs were probed on different images, so they have no common effective images"
    keep = torch.ones(masks[0].shape[0], dtype=torch.bool)
    for history in histories:
        entries = _done(history)
        if not entries:
            return "a run has no successful knowledge-point probe"
        sigma_f = torch.stack([entry["sigma_f"] for entry in entries]).float()
        entropy = torch.stack([entry["entropy"] for entry in entries]).float()
        keep &= effective_images(sigma_f, entropy, history["masks"], late=_late(entries)).cpu()
    return keep


def knowledge_point_measures(history: dict[str, Any], keep: Tensor | None = None) -> dict[str, Measure]:
    """``n_fg``, ``n_bg``, ``fg_ratio``, ``d_mean``, ``d_std``, ``rho``, ``rho_all`` of one run with per-image
    statistics: on all images (``keep=None``: the probe's own counts, images with ``σ_f > 0`` at the last
    checkpoint) or recounted at every checkpoint on the images ``keep`` (the effective view)."""
    entries = _done(history)
    if not entries:
        return {}
    masks, settings = history["masks"], history["settings"]
    if keep is None:
        points = torch.stack([entry["points"] for entry in entries]).bool()
        n_fg = torch.stack([entry["n_fg"] for entry in entries])
        n_bg = entries[-1]["n_bg"]
        last = entries[-1]["effective"].bool()
        used = last if last.any() else torch.ones_like(last)
        foreground = count_knowledge_points(entries[-1]["entropy"].float(), masks, effective=used).foreground
    else:
        counted = [
            count_knowledge_points(
                entry["entropy"].float(),
                masks,
                threshold=settings.get("threshold", 0.2),
                baseline=settings.get("baseline", "dataset"),
                effective=keep,
            )
            for entry in entries
        ]
        points = torch.stack([c.points for c in counted])
        n_fg = torch.stack([c.n_fg for c in counted])
        n_bg, foreground, used = counted[-1].n_bg, counted[-1].foreground, keep
    distances = torch.tensor([float(entry.get("distance", math.nan)) for entry in entries], dtype=torch.float64)
    travel = travel_until_learned(n_fg, distances)[used]
    key = ("knowledge points", masks.shape, hash(masks.numpy().tobytes()), tuple(used.tolist()))
    return {
        "n_fg": _mean(n_fg[-1][used], key),
        "n_bg": _mean(n_bg[used], key),
        "fg_ratio": _mean(image_foreground_ratios(n_fg[-1][used], n_bg[used]), key),
        "d_mean": _mean(travel, key),
        "d_std": _spread(travel, key),
        "rho": _mean(image_stability(points, foreground)[used], key),
        "rho_all": _mean(image_stability(points)[used], key),
    }


# ------------------------------------------------------------------------------------------------------ agreement
def agreement_measures(record: dict[str, Any]) -> dict[str, Measure]:
    """The last successful AgreementProbe entry's scores with per-image statistics: ``cam_cosine``,
    ``cam_energy_in_mask/student``, ``invariance/<t>/student``, and per ε ``teacher_fooling_rate/eps_<k>``,
    ``adv_transfer/eps_<k>`` and the count ``teacher_fooled/eps_<k>`` (an estimate without interval)."""
    entries = [e for e in record["entries"] if e.get("failed") is None and isinstance(e.get("per_image"), dict)]
    if not entries:
        return {}
    values = entries[-1]["per_image"]
    key = ("agreement", hash(record["labels"].numpy().tobytes()), int(record["labels"].numel()))
    measures: dict[str, Measure] = {}
    for name, tensor in values.items():
        student_score = name in ("cam_cosine", "cam_win", "cam_energy_in_mask/student") or (
            name.startswith("invariance/") and name.endswith("/student")
        )
        if student_score:
            measures[name] = _mean(tensor.double(), key)
    for eps in record["eps_keys"]:
        teacher, student = values[f"teacher_fooled/{eps}"].bool(), values[f"student_fooled/{eps}"].bool()
        measures[f"teacher_fooling_rate/{eps}"] = _mean(teacher.double(), key)
        measures[f"adv_transfer/{eps}"] = _ratio(teacher & student, teacher, key)
        measures[f"teacher_fooled/{eps}"] = Measure(float(teacher.sum()))
    return measures


# -------------------------------------------------------------------------------------------------------- UniCAM
def unicam_measures(record: dict[str, Any]) -> dict[str, Measure]:
    """FSS and RS of the latest UniCAMProbe probe, per student layer (``<score>/<layer>``), with per-image
    statistics from the distance matrices the probe saved (resampling images resamples their rows and
    columns; half-samples of distinct images, see :func:`~kd_probe.core.uncertainty.bootstrap_replicates`); only
    estimates when the file has no matrices (an older probe)."""
    entries = [e for e in record["entries"] if "failed" not in e or e.get("failed") is None]
    entries = [e for e in entries if any("/" in key for key in e)]
    if not entries:
        return {}
    last = entries[-1]
    saved = record.get("distances")
    measures = {key: Measure(float(value)) for key, value in last.items() if "/" in key}
    if not isinstance(saved, dict) or saved.get("epoch") != last.get("epoch"):
        return measures
    labels = saved["labels"]
    key = ("unicam", labels.shape, hash(labels.numpy().tobytes()))
    for layer, matrices in saved["layers"].items():
        given = matrices.get("reference", matrices["teacher"])
        teacher, student = matrices["teacher"], matrices["student"]
        rows = (matrices.get("teacher_rows", teacher), matrices.get("student_rows", student))
        scores = {
            "fss": _correlation(teacher, student),
            "fss_v": _correlation(*rows, bias_corrected=False),
            "rs/teacher": _correlation(teacher, labels),
            "rs/student": _correlation(student, labels),
            "rs/distilled": _relevance(student, given, labels),
            "rs/residual": _relevance(given, student, labels),
        }
        for score, statistic in scores.items():
            name = f"{score}/{layer}"
            if name in measures:
                measures[name] = Measure(measures[name].estimate, statistic, labels.shape[0], key, half=True)
    return measures


def _correlation(a: Tensor, b: Tensor, *, bias_corrected: bool = True) -> Statistic:
    """``R*`` (or the V-statistic) of two saved distance matrices on resampled images."""
    return lambda indices: correlation_of_distances(_take(a, indices), _take(b, indices), bias_corrected=bias_corrected)


def _relevance(a: Tensor, b: Tensor, g: Tensor) -> Statistic:
    """``R*(X|Y, G)`` of three saved distance matrices on resampled images."""
    return lambda indices: relevance_given_of_distances(_take(a, indices), _take(b, indices), _take(g, indices))


def _take(distances: Tensor, indices: Tensor) -> Tensor:
    """The distance matrices ``[B, n, n]`` of resampled images ``[B, n]``."""
    return distances.double()[indices[:, :, None], indices[:, None, :]]


# ---------------------------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class Comparison:
    """Distilled and baseline groups of one metric and their difference, answered twice (methods §5.4):

    - ``difference``: do *these runs* differ? The paired bootstrap over probe images of the mean over seed pairs
      (the pairs fixed), an interval about these trained networks;
    - ``seeds``: does *distillation* change the measure? The t-interval over the seed pairs' differences
      (``pair_differences``), undefined with fewer than two pairs.
    """

    distilled: Interval | None
    baseline: Interval | None
    difference: Interval | None
    pair_differences: tuple[float, ...]
    paired: bool
    seeds: Interval


def group_interval(measures: Sequence[Measure], resamples: int, seed: int = 0) -> Interval | None:
    """The interval of a group's mean over its runs (the runs fixed), ``None`` when a run has no per-image data."""
    estimates = [m.estimate for m in measures]
    estimate = sum(estimates) / len(estimates) if estimates else math.nan
    replicates = [m.replicates(resamples, seed) for m in measures]
    if not replicates or any(r is None for r in replicates):
        return None
    images = min(m.images for m in measures)
    return interval(estimate, mean_over_units([r for r in replicates if r is not None]), images=images)


def paired_replicates(
    distilled: Sequence[Measure],
    baseline: Sequence[Measure],
    pairs: Sequence[tuple[int, int]],
    resamples: int,
    seed: int,
) -> tuple[Tensor | None, tuple[float, ...], bool, int]:
    """The pairs' differences (``distilled[d] − baseline[b]`` for each pair ``(d, b)``), the bootstrap replicates of
    their mean over the pairs (``None`` when a run has no per-image data), whether every pair shares its
    resamples (probed on the same images: equal keys) and the fewest images behind a pair."""
    differences, paired = [], True
    for d, b in pairs:
        same = distilled[d].key is not None and distilled[d].key == baseline[b].key
        paired &= same
        first, second = (
            distilled[d].replicates(resamples, seed),
            baseline[b].replicates(resamples, seed + (0 if same else 7919)),
        )
        differences.append(None if first is None or second is None else first - second)
    estimates = tuple(distilled[d].estimate - baseline[b].estimate for d, b in pairs)
    images = min((min(distilled[d].images, baseline[b].images) for d, b in pairs), default=0)
    if not pairs or any(r is None for r in differences):
        return None, estimates, paired and bool(pairs), images
    return mean_over_units([r for r in differences if r is not None]), estimates, paired, images


def compare(
    distilled: Sequence[Measure],
    baseline: Sequence[Measure],
    pairs: Sequence[tuple[int, int]],
    *,
    resamples: int,
    seed: int = 0,
) -> Comparison:
    """Intervals of each group and of the difference over the seed ``pairs`` (indices into the two lists), and
    the seed-level interval of the pairs' differences.

    A pair probed on the same images (equal keys) shares resamples (paired); otherwise its two runs are
    resampled independently. The image-level intervals keep the runs fixed
    (:func:`~kd_probe.core.uncertainty.mean_over_units`); the seed-level one is
    :func:`~kd_probe.core.uncertainty.seed_interval`.
    """
    combined, estimates, paired, images = paired_replicates(distilled, baseline, pairs, resamples, seed)
    difference = None
    if combined is not None:
        difference = interval(sum(estimates) / len(estimates), combined, images=images)
    return Comparison(
        group_interval(distilled, resamples, seed),
        group_interval(baseline, resamples, seed),
        difference,
        estimates,
        paired,
        seed_interval(estimates),
    )
