import math
import re
from pathlib import Path

import pytest
import torch

from kd_probe.apps.report.sections import Evidence
from kd_probe.apps.report.stats import effective_keep, knowledge_point_measures
from kd_probe.apps.report.verdicts import hypothesis_verdict
from kd_probe.apps.report.write import METRICS, ReportError, RunSummary, verdicts
from kd_probe.callbacks._dynamics import history_metrics
from kd_probe.core.knowledge_points import count_knowledge_points

GRID = 4


def _history(images: int, fg_drop: float, seed: int, dead: tuple[int, ...] = ()) -> dict:
    """A knowledge-point history of 3 checkpoints: foreground units (left half) lose ``fg_drop`` nats of entropy
    by the end, each image by its own random amount; ``dead`` images have σ_f = 0 at the middle checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(images, GRID, GRID)
    masks[:, :, : GRID // 2] = 1
    per_image = fg_drop * (0.5 + torch.rand(images, 1, 1, generator=generator))
    entries = []
    for epoch, share in ((0, 0.0), (1, 0.5), (2, 1.0)):
        entropy = -2 + 0.1 * torch.randn(images, GRID, GRID, generator=generator) - share * per_image * masks
        sigma_f = torch.ones(images)
        if epoch == 1:
            sigma_f[list(dead)] = 0
        points = count_knowledge_points(entropy, masks, effective=sigma_f > 0)
        entries.append(
            {
                "epoch": epoch,
                "global_step": 10 * epoch,
                "distance": float(epoch) + 0.1 * seed,
                "failed": None,
                "entropy": entropy,
                "sigma_f": sigma_f,
                "effective": sigma_f > 0,
                "points": points.points,
                "n_fg": points.n_fg,
                "n_bg": points.n_bg,
                "fg_ratio": points.fg_ratio,
            }
        )
    return {"entries": entries, "masks": masks, "settings": {"threshold": 0.2, "baseline": "dataset"}}


def _run(role: str, seed: int, history: dict) -> RunSummary:
    metrics = {key: math.nan for key, _ in METRICS}
    return RunSummary(Path(f"{role}-s{seed}"), f"{role}-s{seed}", role, seed, metrics, {}, _history=history)


def _evidence(distilled: list[RunSummary], baseline: list[RunSummary]) -> Evidence:
    by_seed = {run.seed: index for index, run in enumerate(baseline)}
    pairs = [(index, by_seed[run.seed]) for index, run in enumerate(distilled)]
    return Evidence(distilled, baseline, pairs, resamples=400)


def test_estimates_equal_the_probe_summary() -> None:
    history = _history(12, 0.8, seed=0)
    measures = knowledge_point_measures(history)
    summary = history_metrics(
        history["entries"], count_knowledge_points(history["entries"][-1]["entropy"], history["masks"]).foreground
    )
    for key in ("d_mean", "d_std", "rho", "rho_all"):
        assert math.isclose(measures[key].estimate, summary[key], rel_tol=1e-12), key
    assert math.isclose(measures["fg_ratio"].estimate, history["entries"][-1]["fg_ratio"], rel_tol=1e-12)
    assert measures["n_fg"].estimate == float(history["entries"][-1]["n_fg"].float().mean())


def _verdicts(evidence: Evidence) -> list[str]:
    from kd_probe.apps.report.write import _views

    return verdicts(evidence, _views(evidence))


def test_one_seed_pair_says_whether_the_runs_differ_and_gives_no_verdict_about_distillation() -> None:
    many = _evidence([_run("distilled", 0, _history(80, 1.0, 1))], [_run("baseline", 0, _history(80, 0.3, 2))])
    lines = _verdicts(many)
    assert lines[0].startswith("- **H1** (distilled vs baseline:")
    assert lines[1] == (
        "  - about distillation: **no verdict** from one seed pair: a verdict needs the seed-to-seed spread, which "
        "one pair cannot show; run at least 2 seed pairs (3 or more for a useful interval)."
    )
    assert lines[2] == "  - about these runs (do these networks differ on such images?):"
    assert lines[3].startswith("    - all probe images (80 with")
    assert re.search(r"N_fg [^;]*: as predicted", lines[3]) and re.search(r"N_fg [^;]*: as predicted", lines[4])
    assert "**partly: differ as predicted for some metrics" in lines[3]
    text = "\n".join(lines)
    assert "holds" not in text and "opposite" not in text and "does not hold" not in text
    few = _evidence([_run("distilled", 0, _history(3, 0.35, 1))], [_run("baseline", 0, _history(3, 0.3, 2))])
    h1 = _verdicts(few)[3]
    assert re.search(r"N_fg [^;]*: not distinguishable \(≈ \d+ images would be needed at the observed effect\)", h1)
    reversed_ = _evidence([_run("distilled", 0, _history(80, 0.3, 1))], [_run("baseline", 0, _history(80, 1.0, 2))])
    assert re.search(r"N_fg [^;]*: the other way", _verdicts(reversed_)[3])


def test_seed_pairs_give_the_verdict_about_distillation_with_a_sign_test_from_three() -> None:
    distilled = [_run("distilled", s, _history(30, 1.0, 10 + s)) for s in range(3)]
    baseline = [_run("baseline", s, _history(30, 0.3, 20 + s)) for s in range(3)]
    lines = _verdicts(_evidence(distilled, baseline))
    assert lines[1] == "  - about distillation (3 seed pairs):"
    assert lines[2].startswith("    - all probe images (30 with σ_f > 0): **partly: holds for some metrics")
    assert re.search(r"— N_fg \+[^;]*\]: holds; fg_ratio [^;]*: not distinguishable", lines[2])
    assert "N_fg: 3/3 seed pairs in the predicted direction, sign test p = 0.25" in lines[2]
    same = [_run("baseline", s, _history(30, 0.3, 20 + s)) for s in range(3)]
    control = _verdicts(_evidence([_run("distilled", s, _history(30, 0.3, 30 + s)) for s in range(3)], same))
    assert "**not distinguishable from no difference at this sample size**" in control[2]


def test_the_effective_view_uses_the_images_effective_in_every_run() -> None:
    distilled, baseline = _history(10, 1.0, 1, dead=(2,)), _history(10, 0.3, 2, dead=(5, 7))
    keep = effective_keep([distilled, baseline])
    assert isinstance(keep, torch.Tensor) and sorted(torch.nonzero(~keep).flatten().tolist()) == [2, 5, 7]
    measures = knowledge_point_measures(distilled, keep)
    assert measures["n_fg"].images == 7
    h1 = _verdicts(_evidence([_run("distilled", 0, distilled)], [_run("baseline", 0, baseline)]))[4]
    assert h1.startswith("    - effective images (7 of 10, effective in every run): **")


def test_runs_probed_on_different_images_have_no_effective_view() -> None:
    first, second = _history(10, 1.0, 1), _history(10, 1.0, 2)
    second["masks"] = 1 - second["masks"]
    assert effective_keep([first, second]) == (
        "the runs were probed on different images, so they have no common effective images"
    )


def test_verdicts_refuse_two_runs_with_the_same_role_and_seed(tmp_path: Path) -> None:
    from kd_probe.apps.report.write import _pairs

    first, second = _run("baseline", 0, _history(4, 1, 0)), _run("baseline", 0, _history(4, 1, 0))
    first.path, second.path = Path("e/baseline"), Path("other/baseline")
    with pytest.raises(ReportError) as error:
        _pairs([_run("distilled", 0, _history(4, 1, 0))], [first, second])
    assert str(error.value) == (
        "two baseline runs have seed 0, e/baseline and other/baseline; each seed pairs one distilled with one "
        "baseline run, so report them separately."
    )


def test_each_run_row_shows_its_own_numbers() -> None:
    from kd_probe.apps.report.write import _runs_section, _views

    evidence = _evidence([_run("distilled", 0, _history(20, 1.0, 1))], [_run("baseline", 0, _history(20, 0.2, 2))])
    rows = {line.split(" | ")[0].strip("| "): line for line in _runs_section(evidence, _views(evidence))}
    runs = (*evidence.distilled, *evidence.baseline)
    for run, measures in zip(runs, knowledge_point_measures_of(evidence), strict=True):
        assert rows[run.name].split(" | ")[4].split(" [")[0] == f"{measures['n_fg'].estimate:.3g}", run.name


def knowledge_point_measures_of(evidence: Evidence) -> list[dict]:
    return [knowledge_point_measures(run.history) for run in (*evidence.distilled, *evidence.baseline)]


def _agreement(fooled_teacher: int, fooled_student: int, images: int = 64) -> dict:
    teacher = torch.zeros(images, dtype=torch.bool)
    teacher[:fooled_teacher] = True
    student = torch.zeros(images, dtype=torch.bool)
    student[:fooled_student] = True
    per_image = {
        "cam_cosine": torch.linspace(0.5, 1.0, images),
        "teacher_fooled/eps_1": teacher,
        "student_fooled/eps_1": student,
        "teacher_fooled/eps_8": torch.ones(images, dtype=torch.bool),
        "student_fooled/eps_8": student,
    }
    return {
        "eps_keys": ["eps_1", "eps_8"],
        "labels": torch.arange(images) % 3,
        "entries": [{"epoch": 1, "failed": None, "per_image": per_image}],
    }


def test_a_transfer_from_fewer_than_ten_teacher_fooled_images_is_shown_as_too_few() -> None:
    from kd_probe.apps.report.sections import agreement_section

    distilled, baseline = _run("distilled", 0, _history(8, 1, 0)), _run("baseline", 0, _history(8, 1, 1))
    distilled.agreement, baseline.agreement = _agreement(4, 2), _agreement(4, 1)
    text = "\n".join(agreement_section(_evidence([distilled], [baseline])))
    row = next(line for line in text.splitlines() if line.startswith("| adversarial transfer, ε = 1/255"))
    assert row == (
        "| adversarial transfer, ε = 1/255 | too few: 4 teacher-fooled images (< 10) | "
        "too few: 4 teacher-fooled images (< 10) | – | – |"
    )
    row = next(line for line in text.splitlines() if line.startswith("| adversarial transfer, ε = 8/255"))
    assert "; 64 fooled |" in row and row.count("[") == 3  # enough images: values, intervals and the difference
    assert row.endswith("| needs ≥ 2 seed pairs |")  # one seed pair: no statement about distillation
    assert "| teacher fooled, ε = 1/255 | 0.0625 [" in text and "| CAM cosine | 0.75 [" in text


def _seed_pair_differences(pairs: int, generator: torch.Generator, effect: float) -> dict[str, list[float]]:
    """Per seed pair, distilled − baseline of two correlated run-level means over 40 probe images, each run with a
    seed-level random effect (sd 1) on top of its image noise (sd 2), plus a planted procedure ``effect``."""
    runs = torch.randn(2 * pairs, 40, generator=generator, dtype=torch.float64) * 2
    runs = runs.mean(dim=1) + torch.randn(2 * pairs, generator=generator, dtype=torch.float64)
    second = runs + 0.5 * torch.randn(2 * pairs, generator=generator, dtype=torch.float64)  # a correlated metric
    return {
        "n_fg": (runs[:pairs] - runs[pairs:] + effect).tolist(),
        "fg_ratio": (second[:pairs] - second[pairs:] + effect).tolist(),
    }


@pytest.mark.parametrize(("pairs", "power"), [(1, 0.0), (2, 0.0), (3, 0.05), (6, 0.5)])
def test_verdicts_about_distillation_claim_a_null_effect_at_most_at_the_nominal_rate(pairs: int, power: float) -> None:
    """Calibration (issue 29): 1000 simulated H1 verdicts per seed-pair count on runs that differ only by their
    seed claim a difference ("holds", "opposite", "partly", "mixed") at most at 5 % plus Monte-Carlo error; with a
    planted effect of 1.5 seed-pair standard deviations they find it at least at the stated power."""
    predictions = (("n_fg", 1), ("fg_ratio", 1))
    generator = torch.Generator().manual_seed(100 + pairs)
    trials, no_claim = 1000, ("not distinguishable from no difference at this sample size", "no verdict")
    null = [hypothesis_verdict(_seed_pair_differences(pairs, generator, 0.0), predictions)[0] for _ in range(trials)]
    claims = sum(word not in no_claim for word in null) / trials
    assert claims <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / trials), claims
    planted = [hypothesis_verdict(_seed_pair_differences(pairs, generator, 2.2), predictions)[0] for _ in range(trials)]
    found = sum(word == "holds" for word in planted) / trials
    assert found >= power, found
    if pairs == 1:
        assert set(null) == set(planted) == {"no verdict"}
