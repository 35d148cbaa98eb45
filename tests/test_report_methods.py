"""``kd-probe report`` on several KD methods (issue 31): planted differences are flagged where they are and
nowhere else, identical methods stay within the stated family-wise level, the ranking says which methods cannot
be told apart, and ``kd-probe demo --quick --methods`` writes the table, the figure and a run per method."""

import json
import math
import random
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
import torch

from kd_probe.apps.cli import main
from kd_probe.apps.report.method_stats import Column, MethodEvidence, method_cells, ranking
from kd_probe.apps.report.stats import Measure, _mean
from kd_probe.core.uncertainty import (
    bootstrap_p_value,
    bootstrap_replicates,
    holm,
    interval,
    mean_of,
    seed_interval,
    seed_p_value,
)
from kd_probe.io.runs import RunSummary

IMAGES = 40
COLUMNS = [
    Column("n_fg", "N_fg", "knowledge", 1),
    Column("fg_ratio", "fg_ratio", "knowledge", 1),
    Column("cam_cosine", "CAM cosine", "teacher", 1),
    Column("fss", "FSS", "teacher", 1),
]


def test_the_p_values_match_their_intervals() -> None:
    """A difference is flagged at level α exactly when its interval at 1 − α excludes 0 (both levels)."""
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for trial in range(60):
        shift = 0.08 * (trial % 12)
        values = torch.randn(IMAGES, generator=generator) + shift
        replicates = bootstrap_replicates(mean_of(values), IMAGES, resamples=4000, seed=trial)
        p = bootstrap_p_value(replicates, images=IMAGES)
        for alpha in (0.05, 0.0125):
            found = interval(float(values.mean()), replicates, images=IMAGES, level=1 - alpha)
            if abs(p - alpha) > 0.002:  # away from the boundary, where quantile interpolation decides
                assert (found.direction() != 0) == (p < alpha), (trial, p, alpha, found)
                checked += 1
        differences = (torch.randn(4, generator=generator) + shift).tolist()
        for alpha in (0.05, 0.0125):
            assert (seed_interval(differences, level=1 - alpha).direction() != 0) == (seed_p_value(differences) < alpha)
    assert checked > 80


def test_holm_rejects_step_down_and_never_less_than_bonferroni() -> None:
    assert holm([0.001, 0.011, 0.02, 0.04]) == [True, True, True, True]  # 0.001≤.0125, .011≤.0167, .02≤.025, .04≤.05
    assert holm([0.001, 0.03, 0.011, 0.3]) == [True, False, True, False]
    assert holm([math.nan, 0.01]) == [False, True]
    assert holm([math.nan, 0.03]) == [False, False]  # the NaN still counts in m: 0.03 > 0.05/2
    rng = random.Random(1)
    for _ in range(200):
        p = [rng.random() ** 3 for _ in range(6)]
        assert all(h or not b for h, b in zip(holm(p), [x <= 0.05 / 6 for x in p], strict=True))


def _run(group: str, seed: int) -> RunSummary:
    role = "baseline" if group == "baseline" else "distilled"
    run = RunSummary(Path(f"{group}-s{seed}"), f"{group}-s{seed}", role, seed, {}, {})
    run.method = None if group == "baseline" else group
    return run


def _evidence(
    generator: torch.Generator,
    methods: tuple[str, ...],
    seeds: int,
    *,
    seed_sd: float,
    planted: dict[tuple[str, str], float] | None = None,
) -> MethodEvidence:
    """Runs whose measures are per-image means: the image's own value (the same images in every run), a
    training-seed effect per run (sd ``seed_sd``), image noise, and a ``planted`` shift per (method, measure)."""
    image_effect = {c.key: torch.randn(IMAGES, generator=generator) for c in COLUMNS}
    groups = {method: [_run(method, s) for s in range(seeds)] for method in methods}
    baseline = [_run("baseline", s) for s in range(seeds)]
    measures: dict[int, dict[str, Measure]] = {}
    for run in [*baseline, *(r for runs in groups.values() for r in runs)]:
        own = {}
        for column in COLUMNS:
            shift = (planted or {}).get((run.group, column.key), 0.0)
            seed_effect = seed_sd * float(torch.randn((), generator=generator))
            values = image_effect[column.key] + seed_effect + shift + 0.5 * torch.randn(IMAGES, generator=generator)
            own[column.key] = _mean(values, ("same images", IMAGES))
        measures[id(run)] = own
    return MethodEvidence(groups, baseline, measures, resamples=400)


def _flagged(evidence: MethodEvidence, level: str) -> set[tuple[str, str]]:
    return {key for key, cell in evidence.cells.items() if getattr(cell, f"{level}_flag")}


def test_a_method_planted_to_differ_on_one_measure_is_flagged_on_that_measure_only() -> None:
    generator = torch.Generator().manual_seed(3)
    planted = {("dkd", "cam_cosine"): 1.5}
    across_seeds = _evidence(generator, ("kd", "dkd", "at", "crd"), 4, seed_sd=0.1, planted=planted)
    method_cells(across_seeds, COLUMNS)
    assert _flagged(across_seeds, "seeds") == {("dkd", "cam_cosine")}
    assert across_seeds.cells["dkd", "cam_cosine"].seeds_flag == 1
    one_pair = _evidence(generator, ("kd", "dkd", "at"), 1, seed_sd=0.0, planted={("at", "fss"): -0.6})
    method_cells(one_pair, COLUMNS)
    assert _flagged(one_pair, "runs") == {("at", "fss")}
    assert one_pair.cells["at", "fss"].runs_flag == -1
    assert all(cell.seeds is not None and cell.seeds.images == 1 for cell in one_pair.cells.values())
    assert _flagged(one_pair, "seeds") == set()  # one seed pair: nothing about distillation


@pytest.mark.parametrize(("level", "seeds", "seed_sd"), [("seeds", 3, 1.0), ("runs", 1, 0.0)])
def test_identical_methods_stay_within_the_family_wise_level(level: str, seeds: int, seed_sd: float) -> None:
    """Four methods that are the baseline under another name, 300 draws (with the report's 2000 resamples for these runs): the
    share of draws in which a measure's family (its 4 comparisons) flags anything stays near 5 % (the mean
    over the 4 families within 2.4 binomial standard errors of 1200 family-draws, each family within 3.2 of
    300); without Holm (each test at 5 %) it would be about 1 − 0.95⁴ ≈ 19 % for independent tests. (With
    400 resamples the bootstrap's far tails are too coarse: 6.0 % over 600 draws.)"""
    generator = torch.Generator().manual_seed(11)
    draws, any_flag = 300, {c.key: 0 for c in COLUMNS}
    for _ in range(draws):
        evidence = _evidence(generator, ("kd", "dkd", "at", "crd"), seeds, seed_sd=seed_sd)
        evidence.resamples = 2000 if level == "runs" else 400
        method_cells(evidence, COLUMNS)
        for key in {key for _, key in _flagged(evidence, level)}:
            any_flag[key] += 1
    rates = {key: count / draws for key, count in any_flag.items()}
    assert max(rates.values()) <= 0.09, rates
    assert sum(rates.values()) / len(rates) <= 0.065, rates


def test_the_ranking_names_the_leader_and_the_methods_it_cannot_be_told_apart_from() -> None:
    generator = torch.Generator().manual_seed(5)
    planted = {("kd", "n_fg"): 2.0, ("dkd", "n_fg"): 1.9, ("crd", "n_fg"): 0.0}
    evidence = _evidence(generator, ("kd", "dkd", "crd"), 4, seed_sd=0.05, planted=planted)
    method_cells(evidence, COLUMNS)
    found = ranking(evidence, COLUMNS[0])
    assert found is not None and found.level == "seeds"
    assert {found.order[0][0], found.order[1][0]} == {"kd", "dkd"}
    assert found.not_told_apart == [found.order[1][0]] and found.ahead_of == ["crd"]
    assert ranking(evidence, Column("n_bg", "N_bg", "knowledge", 0)) is None  # no preferred direction


@pytest.fixture(scope="module")
def quick_methods(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("runs")
    buffer = StringIO()
    with redirect_stdout(buffer):
        assert main(["demo", "--quick", "--methods", "kd,dkd,at", "--out", str(out), "--experiment", "e"]) == 0
    return out / "e", buffer.getvalue()


def test_quick_methods_demo_writes_the_table_the_figure_and_a_run_per_method(quick_methods: tuple[Path, str]) -> None:
    folder, out = quick_methods
    assert "[2/5] distilled student (kd): " in out and "[4/5] distilled student (at): " in out
    assert "[5/5] baseline student" in out
    for run, method in (("distilled-kd", "kd"), ("distilled-dkd", "dkd"), ("distilled-at", "at"), ("baseline", None)):
        assert list((folder / run).glob("events.out.tfevents.*")), run
        assert json.loads((folder / run / "kd_probe_run.json").read_text()).get("kd_method") == method
    report = (folder / "report.md").read_text()
    assert "**3 KD methods** (kd, dkd, at) against one no-teacher baseline" in report
    assert "## What each method transfers: accuracy and knowledge points — these runs" in report
    table = report.split("agreement with the teacher and UniCAM — these runs")[1].split("\n\n")[1]
    header = table.splitlines()[0]
    for measure in ("CAM cosine", "adv. transfer ε=8/255", "shift invariance", "FSS", "RS residual"):
        assert measure in header
    assert [line.split(" | ")[0] for line in table.splitlines()[2:]] == ["| kd", "| dkd", "| at"]
    assert "No verdict about distillation: a method has one seed pair" in report
    assert "## Which method transfers what" in report and "![methods](methods.png)" in report
    assert (folder / "methods.png").stat().st_size > 10_000


def test_the_report_refuses_group_summaries_and_two_runs_of_one_method_and_seed(
    quick_methods: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder, _ = quick_methods
    assert main(["report", str(folder), "--out", str(tmp_path / "a"), "--group-summaries"]) == 2
    assert capsys.readouterr().err == (
        "kd-probe report: --group-summaries compares one distilled group with the baseline, and the runs hold 3 "
        "KD methods (kd, dkd, at); report each method's runs with the baseline on their own.\n"
    )
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    shutil.copytree(copy / "distilled-kd", copy / "distilled-kd-again")
    assert main(["report", str(copy), "--out", str(tmp_path / "b"), "--no-figures"]) == 2
    assert capsys.readouterr().err == (
        f"kd-probe report: two distilled runs of KD method kd have seed 0, {copy / 'distilled-kd'} and "
        f"{copy / 'distilled-kd-again'}; each seed pairs one distilled with one baseline run, so report them "
        "separately.\n"
    )


def test_methods_all_leaves_the_feature_methods_out_without_feature_maps() -> None:
    import argparse

    from kd_probe.apps.options import FEATURE_METHODS, KD_METHODS, demo_methods

    assert demo_methods(argparse.Namespace(methods=("all",), modality="image")) == (KD_METHODS, "")
    kept, note = demo_methods(argparse.Namespace(methods=("all",), modality="text"))
    assert kept == tuple(m for m in KD_METHODS if m not in FEATURE_METHODS) and len(kept) == 9
    assert note == (
        "--methods all runs 9 methods: the feature methods fitnets, at, nst, vid match feature maps, which "
        "--modality text has not."
    )


def test_overwrite_removes_the_method_runs_of_an_earlier_comparison(tmp_path: Path) -> None:
    from kd_probe.apps.demo.folders import clear_experiment

    for name in ("distilled-dkd-s1", "distilled-logit_standard_kd", "baseline-s1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "kd_probe_run.json").write_text("{}")
    (tmp_path / "methods.png").write_bytes(b"png")
    (tmp_path / "notes-s1").mkdir()  # not the demo's: left alone
    with pytest.raises(FileExistsError, match="already holds an earlier demo"):
        clear_experiment(tmp_path, overwrite=False)
    clear_experiment(tmp_path, overwrite=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes-s1"]


def test_seed_pairs_that_agree_exactly_are_not_a_test() -> None:
    """Three equal differences (a measure that moves in whole images) have no spread: no p-value, no flag."""
    assert math.isnan(seed_p_value([1 / 64] * 3)) and seed_p_value([0.0, 0.0]) == 1.0
    assert math.isnan(seed_p_value([0.3]))
