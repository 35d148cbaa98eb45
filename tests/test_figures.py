from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from kd_probe.apps.report.figures import _draw_curves, _draw_unicam, curves_figure, unicam_figure
from tests.test_report import _history, _run


def _runs(seeds: int) -> list:
    return [
        _run(role, seed, _history(6, 1.0, seed + 10 * (role == "baseline")))
        for role in ("distilled", "baseline")
        for seed in range(seeds)
    ]


@pytest.mark.parametrize("seeds", [1, 3])
def test_curves_are_written_and_show_a_mean_and_band_per_group_with_several_seeds(seeds: int, tmp_path: Path) -> None:
    runs = _runs(seeds)
    assert curves_figure(runs, tmp_path / "curves.png") == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    fig = _draw_curves(runs)
    assert fig is not None
    axes = fig.axes
    assert [axis.get_title() for axis in axes] == ["N_fg (foreground knowledge points / image)", "fg_ratio", "ρ (live)"]
    for axis in axes:
        labels = [line.get_label() for line in axis.get_lines()]
        bands = [band.get_label() for band in axis.collections]
        if seeds == 1:
            assert labels == ["distilled-s0", "baseline-s0"] and bands == []
        else:
            assert {f"{role}-s{seed}" for role in ("distilled", "baseline") for seed in range(3)} <= set(labels)
            assert {"distilled: mean of 3 seeds", "baseline: mean of 3 seeds"} <= set(labels)
            assert bands == ["distilled: min–max of 3 seeds", "baseline: min–max of 3 seeds"]
            seed_markers = {line.get_marker() for line in axis.get_lines() if line.get_label().startswith("distilled-")}
            assert len(seed_markers) == 3  # each seed has its own marker
    n_fg = {line.get_label(): line.get_ydata() for line in axes[0].get_lines()}
    if seeds == 3:
        mean = torch.tensor(np.array([n_fg[f"distilled-s{s}"] for s in range(3)]), dtype=torch.float64).mean(0)
        assert torch.allclose(torch.as_tensor(n_fg["distilled: mean of 3 seeds"], dtype=torch.float64), mean)


def test_no_probed_run_draws_no_curves(tmp_path: Path) -> None:
    assert curves_figure([], tmp_path / "curves.png") is None and not (tmp_path / "curves.png").exists()


def _unicam_run(role: str, seed: int) -> SimpleNamespace:
    generator = torch.Generator().manual_seed(seed)
    maps = {kind: torch.rand(4, 8, 8, generator=generator) for kind in ("distilled", "residual")}
    record = {"images": torch.rand(4, 3, 8, 8, generator=generator), "maps": [{"epoch": 2, **maps}]}
    return SimpleNamespace(role=role, name=f"{role}-s{seed}", seed=seed, unicam=record)


@pytest.mark.parametrize("seeds", [1, 3])
def test_unicam_columns_name_the_run_and_the_map_and_a_colour_bar_gives_the_scale(seeds: int, tmp_path: Path) -> None:
    runs = [_unicam_run(role, seed) for role in ("distilled", "baseline") for seed in range(seeds)]
    assert unicam_figure(runs, tmp_path / "unicam.png") == tmp_path / "unicam.png"
    assert (tmp_path / "unicam.png").read_bytes()[:4] == b"\x89PNG"
    fig = _draw_unicam(runs, images=4)
    assert fig is not None
    titles = [axis.get_title() for axis in fig.axes if axis.get_title()]
    assert titles == [
        "input",
        "distilled student (distilled-s0):\ndistilled map, epoch 2",
        "distilled student (distilled-s0):\nresidual map, epoch 2",
        "baseline student (baseline-s0):\ndistilled map, epoch 2",
        "baseline student (baseline-s0):\nresidual map, epoch 2",
    ]
    bars = [axis for axis in fig.axes if axis.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "UniCAM map (each scaled to [0, 1])"
    assert bars[0].get_ylim() == (0.0, 1.0)
