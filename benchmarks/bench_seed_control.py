"""The negative control of issue 29: runs that differ only in their training seed, judged by the report.

Trains ``--runs`` students of the image demo's recipe that differ only in their seed (0 … N−1): the demo's
from-scratch baseline student (``kd_probe/apps/demo/run.py``: ``pl.seed_everything(seed)``, the demo's
``DistillationModule`` options, Trainer options and ``computing_threads``), with the demo's knowledge-point probe
(``knowledge_probes``: the plan's σ settings, probe seed = training seed as in the demo; the agreement and UniCAM probes,
which need a teacher, and the weight monitor are left out). The plan is the demo's with no options (4000
training images of data seed 0, 10 epochs, 40 probe images, secant σ maps); ``--epochs`` and ``--quick`` are
passed to the demo's parser for smoke tests. Each run folder gets the demo's ``kd_probe_run.json`` (role
"baseline"); run folders already in ``--out`` are reused, so the evaluation reruns without training.

Then, for k = 1, 2, 3, 6 seed pairs, it plays the report on assignments of 2k distinct runs: k called
"distilled", k "baseline", pair i = (distilled i, baseline i) — every ordered pair for k = 1, ``--assignments``
random draws (generator seed ``--draw-seed``) for k ≥ 2. Per hypothesis (H1–H3) and view (all probe images; the
effective images, intersected over the 2k runs as ``kd_probe/apps/report/write.py`` does), it counts:

- **(b) about distillation**: ``hypothesis_verdict`` over the seed pairs' differences claims a difference (any
  word but "not distinguishable …" or "no verdict"). Nothing differs, so this should happen ≤ 5 % of the time;
- **(a) about these runs**: some metric of the hypothesis has a paired interval over probe images
  (``compare(...).difference``, ``--resamples``) that excludes 0 — "these networks differ", which the report
  before issue 29 called a verdict (59 % for H1 with one pair on the demo).

Printed: each run's estimates, both rates per hypothesis, k and view with the number of assignments, the
seed-to-seed spread of each metric against one pair's paired standard error, and the wall time of training
and evaluation. The ± of a rate is the Monte-Carlo error of the draws (binomial) given these runs; which runs the
seeds happened to train adds more, since every assignment is drawn from the same ``--runs`` runs.

Run: ``python benchmarks/bench_seed_control.py [--runs 13] [--out DIR] [--skip-training] [--resamples 2000]
[--assignments 300] [--show-claims]`` (writes only into ``--out``, default ``$TMPDIR/kd_probe_seed_control``; about
1.5 minutes per run on a 2-core CPU, then about 30 s of evaluation, 3–4 minutes with ``--assignments 3000``). ``OMP_WAIT_POLICY`` is ``PASSIVE`` unless set: on a CPU
shared with another process, OpenMP threads that spin while they wait made each training step ~10× slower
(2.0 s against 0.20 s for a demo student step with 2 threads next to a running demo); the results do not depend
on it. Smoke test:
``python benchmarks/bench_seed_control.py --runs 4 --quick --out /tmp/control-smoke --resamples 200``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see the module docstring

import argparse
import itertools
import json
import math
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from kd_probe.apps.demo.modalities import modality
from kd_probe.apps.demo.plan import add_arguments, make_plan
from kd_probe.apps.demo.probes import knowledge_probes
from kd_probe.apps.demo.run import (
    RunResult,
    _logger,
    _quiet_lightning,
    _record,
    _test,
    _trainer_options,
    computing_threads,
)
from kd_probe.apps.report.stats import Measure, compare, effective_keep, knowledge_point_measures
from kd_probe.apps.report.verdicts import HYPOTHESES, hypothesis_verdict
from kd_probe.callbacks import WeightTrajectoryMonitor
from kd_probe.core.uncertainty import RESAMPLES
from kd_probe.io.run_files import RUN_FILE
from kd_probe.io.runs import RunSummary, load_run
from kd_probe.modules import DistillationModule

OPTIMIZER: dict[str, Any] = dict(optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine")  # _run_demo's
NO_CLAIM = ("not distinguishable from no difference at this sample size", "no verdict")
PAIRS = (1, 2, 3, 6)
METRICS = ("n_fg", "fg_ratio", "d_mean", "d_std", "rho")


def _demo_args(options: argparse.Namespace) -> argparse.Namespace:
    """The demo's options with its defaults (data seed 0), plus the smoke-test overrides."""
    given = [*(["--epochs", str(options.epochs)] if options.epochs else []), *(["--quick"] if options.quick else [])]
    return add_arguments(argparse.ArgumentParser()).parse_args(given)


def _finished(folder: Path) -> bool:
    return (folder / RUN_FILE).is_file()


def train(options: argparse.Namespace) -> tuple[list[Path], float, int]:
    """Train the missing runs (reusing finished ones); their folders, the seconds spent and how many trained."""
    demo = _demo_args(options)
    plan = make_plan(demo)
    kit = modality(demo, plan)
    _quiet_lightning()
    out: Path = options.out
    out.mkdir(parents=True, exist_ok=True)
    folders, trained, start = [], 0, time.perf_counter()
    for seed in range(options.runs):
        name = f"baseline-s{seed}"
        folder = out / name
        folders.append(folder)
        if _finished(folder):
            recorded = json.loads((folder / RUN_FILE).read_text())
            if recorded.get("epochs") != plan.epochs or recorded.get("seed") != seed:
                raise SystemExit(
                    f"{folder} holds a run of {recorded.get('epochs')} epochs, seed {recorded.get('seed')}; this plan "
                    f"trains {plan.epochs} epochs, seed {seed}: choose another --out or remove it."
                )
            continue
        if options.skip_training:
            folders.pop()
            continue
        if folder.exists():  # an interrupted run of ours: start it again (its events would be appended to)
            shutil.rmtree(folder)
        began = time.perf_counter()
        with computing_threads(demo.threads):
            pl.seed_everything(seed, verbose=False)
            module = DistillationModule(kit.student(), **OPTIMIZER)
            callbacks = [c for c in knowledge_probes(plan, kit, seed, []) if not isinstance(c, WeightTrajectoryMonitor)]
            trainer = pl.Trainer(
                max_epochs=plan.epochs,
                logger=_logger(out, name),
                callbacks=callbacks,
                enable_progress_bar=False,
                **_trainer_options(demo.quick),
            )
            trainer.fit(module, datamodule=kit.data)
            accuracy = _test(trainer, module, kit.data)
            _record(RunResult(name, "baseline", seed, accuracy, folder), demo.protocol, plan, kit)
        trained += 1
        print(f"trained {name}: test accuracy {accuracy:.1%}, {time.perf_counter() - began:.0f} s", flush=True)
    return folders, time.perf_counter() - start, trained


def _assignments(runs: int, pairs: int, draws: int, rng: random.Random) -> list[tuple[list[int], list[int]]]:
    """(distilled, baseline) run indices: every ordered pair for one pair, else ``draws`` random draws of 2k runs."""
    if pairs == 1:
        return [([a], [b]) for a, b in itertools.permutations(range(runs), 2)]
    found = []
    for _ in range(draws):
        chosen = rng.sample(range(runs), 2 * pairs)
        found.append((chosen[:pairs], chosen[pairs:]))
    return found


class Views:
    """The knowledge-point measures of each run in the report's two views; the effective view's are cached by
    the set of images kept (intersected over the runs of an assignment)."""

    def __init__(self, runs: Sequence[RunSummary]) -> None:
        self.runs = runs
        self.all = [knowledge_point_measures(run.history) for run in runs]
        self._effective: dict[tuple[int, bytes], dict[str, Measure]] = {}

    def effective(self, chosen: Sequence[int]) -> list[dict[str, Measure]] | None:
        keep = effective_keep([self.runs[i].history for i in chosen])
        if not isinstance(keep, torch.Tensor) or not bool(keep.any()):
            return None
        key = keep.numpy().tobytes()
        for i in chosen:
            if (i, key) not in self._effective:
                self._effective[i, key] = knowledge_point_measures(self.runs[i].history, keep)
        return [self._effective[i, key] for i in chosen]


def evaluate(views: Views, options: argparse.Namespace) -> list[dict[str, Any]]:
    """Both claim rates per (view, k, hypothesis)."""
    runs, rng, rows = views.runs, random.Random(options.draw_seed), []
    for pairs in (k for k in PAIRS if 2 * k <= len(runs)):
        counts: dict[tuple[str, str], list[int]] = {}  # (view, hypothesis) → [assignments, (b) claims, (a) claims]
        words: dict[tuple[str, str], dict[str, int]] = {}
        kept: dict[str, list[int]] = {"all": [], "effective": []}  # images each assignment's view uses
        for distilled, baseline in _assignments(len(runs), pairs, options.assignments, rng):
            chosen = [*distilled, *baseline]
            measured = {"all": [views.all[i] for i in chosen], "effective": views.effective(chosen)}
            for view, measures in measured.items():
                if measures is None:
                    continue
                kept[view].append(min(m["n_fg"].images for m in measures))
                d, b = measures[:pairs], measures[pairs:]
                for label, _, predictions in HYPOTHESES:
                    found = {
                        key: compare(
                            [m[key] for m in d],
                            [m[key] for m in b],
                            [(i, i) for i in range(pairs)],
                            resamples=options.resamples,
                        )
                        for key, _ in predictions
                    }
                    word = hypothesis_verdict(
                        {key: found[key].pair_differences for key, _ in predictions}, predictions
                    )[0]
                    intervals = [found[key].difference for key, _ in predictions]
                    differ = any(interval is not None and interval.direction() != 0 for interval in intervals)
                    count = counts.setdefault((view, label), [0, 0, 0])
                    count[0] += 1
                    count[1] += word not in NO_CLAIM
                    count[2] += differ
                    tally = words.setdefault((view, label), {})
                    tally[word] = tally.get(word, 0) + 1
                    if options.show_claims and word not in NO_CLAIM:
                        seeds = [f"s{runs[d].seed}−s{runs[b].seed}" for d, b in zip(distilled, baseline, strict=True)]
                        shown = "; ".join(
                            f"{key} {', '.join(f'{x:+.4g}' for x in found[key].pair_differences)}"
                            for key, _ in predictions
                        )
                        print(f"  claim: {view} {label} k={pairs} pairs {', '.join(seeds)}: {shown} → {word}")
        for (view, label), (total, procedure, runs_differ) in counts.items():
            rows.append(
                dict(
                    view=view,
                    hypothesis=label,
                    pairs=pairs,
                    assignments=total,
                    procedure=procedure / total,
                    runs=runs_differ / total,
                    words=words[view, label],
                    images=statistics.median(kept[view]),
                )
            )
    return rows


def _binomial(rate: float, count: int) -> float:
    return math.sqrt(rate * (1 - rate) / count) if count else math.nan


def print_runs(runs: Sequence[RunSummary], measures: Sequence[dict[str, Measure]]) -> None:
    print("\nRuns (all probe images; estimates of the report's per-run numbers)")
    print(f"| run | seed | test accuracy | images | {' | '.join(METRICS)} |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    for run, own in zip(runs, measures, strict=True):
        values = " | ".join(f"{own[key].estimate:.4g}" for key in METRICS)
        print(f"| {run.name} | {run.seed} | {run.metrics['accuracy']:.1%} | {own['n_fg'].images} | {values} |")


def print_spread(measures: Sequence[dict[str, Measure]], resamples: int) -> None:
    """Seed-to-seed spread of each metric against the paired standard error of one pair's difference."""
    print(f"\nSeed-to-seed spread vs one pair's paired standard error (all probe images, {resamples} resamples)")
    print(
        "| metric | sd over runs | sd of pair differences | paired SE of one pair (median) | ratio sd(diff)/SE | ratio sd(runs)/SE | pairs paired |"
    )
    print("|---|---|---|---|---|---|---|")
    for key in METRICS:
        estimates = [m[key].estimate for m in measures]
        differences, errors, paired = [], [], 0
        for a, b in itertools.combinations(range(len(measures)), 2):
            first, second = measures[a][key], measures[b][key]
            same = first.key is not None and first.key == second.key
            paired += same
            r1, r2 = first.replicates(resamples, 0), second.replicates(resamples, 0 if same else 7919)
            differences.append(first.estimate - second.estimate)
            if r1 is not None and r2 is not None:
                errors.append(float((r1 - r2).std()))
        spread = statistics.stdev(estimates)
        pair_spread = math.sqrt(statistics.fmean(d * d for d in differences))  # E(d²) = 2 σ² for exchangeable runs
        error = statistics.median(errors) if errors else math.nan
        print(
            f"| {key} | {spread:.4g} | {pair_spread:.4g} | {error:.4g} | {pair_spread / error:.2f} | "
            f"{spread / error:.2f} | {paired}/{len(differences)} |"
        )


def print_table(rows: list[dict[str, Any]], runs: int) -> None:
    print(f"\nClaims on runs that differ only by seed ({runs} runs; a claim is a false positive)")
    print(
        "| view | hypothesis | seed pairs k | assignments | images (median) | (b) about distillation: claims "
        "| (a) these runs differ |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["view"], r["hypothesis"], r["pairs"])):
        count = row["assignments"]
        b, a = row["procedure"], row["runs"]
        print(
            f"| {row['view']} | {row['hypothesis']} | {row['pairs']} | {count} | {row['images']:.0f} | "
            f"{b:.1%} ± {_binomial(b, count):.1%} | {a:.1%} ± {_binomial(a, count):.1%} |"
        )
    print("\nVerdict words about distillation (counts)")
    for row in sorted(rows, key=lambda r: (r["view"], r["hypothesis"], r["pairs"])):
        words = "; ".join(f"{word}: {n}" for word, n in sorted(row["words"].items(), key=lambda item: -item[1]))
        print(f"  {row['view']:<9} {row['hypothesis']} k={row['pairs']}: {words}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=13, help="runs (seeds 0 … N−1; default 13)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "kd_probe_seed_control",
        help="folder of the runs (reused when it holds them)",
    )
    parser.add_argument("--skip-training", action="store_true", help="evaluate the finished runs in --out only")
    parser.add_argument(
        "--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (the report's: {RESAMPLES})"
    )
    parser.add_argument("--assignments", type=int, default=300, help="random assignments per k ≥ 2 (default 300)")
    parser.add_argument("--draw-seed", type=int, default=0, help="seed of the assignments' generator")
    parser.add_argument("--epochs", type=int, default=None, help="the demo's --epochs (smoke tests)")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick plan (smoke tests)")
    parser.add_argument(
        "--show-claims",
        action="store_true",
        help="print the seed pairs' differences (distilled − baseline) of every claim about distillation",
    )
    options = parser.parse_args()
    if options.runs < 2:
        parser.error(f"argument --runs: expected at least 2 runs, got {options.runs}")

    folders, training, trained = train(options)
    start = time.perf_counter()
    runs = [load_run(folder) for folder in folders if _finished(folder)]
    if len(runs) < 2:
        raise SystemExit(f"{options.out} holds {len(runs)} finished runs; the control needs at least 2.")
    with computing_threads(2):
        views = Views(runs)
        print_runs(runs, views.all)
        print_spread(views.all, options.resamples)
        rows = evaluate(views, options)
    evaluation = time.perf_counter() - start
    print_table(rows, len(runs))
    print(
        f"\n{len(runs)} runs in {options.out} ({trained} trained now in {training:.0f} s"
        f"{f', {training / trained:.0f} s per run' if trained else ''}); evaluation {evaluation:.0f} s "
        f"({options.resamples} resamples, {options.assignments} assignments per k ≥ 2, draw seed {options.draw_seed})"
    )


if __name__ == "__main__":
    main()
