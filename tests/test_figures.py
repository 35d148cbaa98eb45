from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from kd_probe.apps.report.figures import (
    MAPS_COLOUR_BAR,
    _draw_curves,
    _draw_maps,
    _draw_unicam,
    curves_figure,
    maps_figure,
    unicam_figure,
)
from kd_probe.core.render import KNOWLEDGE_POINT_RGB, OUTLINE_RGB, per_image_unit
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


def _maps_run(role: str, seed: int, **extra: object) -> Any:
    """A run whose history has colour probe images (8×8, each channel its own pattern) and image-size masks."""
    history = _history(3, 1.0, seed)
    across, down = torch.meshgrid(torch.linspace(-1.5, 1.5, 8), torch.linspace(-1.5, 1.5, 8), indexing="xy")
    channels = torch.stack([across, down, -0.5 * across])  # [3, 8, 8]: red grows to the right, green downwards
    history["images"] = channels[None] * torch.tensor([1.0, 0.5, 2.0])[:, None, None, None]
    history["masks"] = history["masks"].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    history.update(extra)
    return _run(role, seed, history)


def test_maps_show_the_inputs_in_colour_with_a_legend_and_an_entropy_colour_bar(tmp_path: Path) -> None:
    runs = [_maps_run("distilled", 0), _maps_run("baseline", 0)]
    assert maps_figure(runs, tmp_path / "maps.png") == tmp_path / "maps.png"
    assert (tmp_path / "maps.png").read_bytes()[:4] == b"\x89PNG"
    fig = _draw_maps(runs, images=3)
    assert fig is not None
    inputs = [axis for axis in fig.axes if axis.get_title().startswith("input")]
    assert [axis.get_title() for axis in inputs] == ["input\n(min–max per image)"], "scaling said: no mean/std known"
    first = [axis for axis in fig.axes if axis.get_subplotspec() and axis.get_subplotspec().colspan.start == 0]
    assert len(first) == 3  # one input per probe image, in the first column
    picture = np.asarray(first[0].get_images()[0].get_array())
    assert picture.shape == (8, 8, 3) and np.ptp(picture, axis=2).max() > 0.1, "in colour, not grey"
    expected = per_image_unit(runs[0].history["images"][:1])[0].permute(1, 2, 0).numpy()
    assert np.allclose(picture, expected, atol=1e-6), "min–max per image, as TensorBoard shows it"
    legend = fig.legends[0]
    assert [text.get_text() for text in legend.get_texts()] == ["knowledge point", "object outline"]
    colours = [tuple(patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    assert colours == [KNOWLEDGE_POINT_RGB, OUTLINE_RGB], "the overlays' exact colours"
    bars = [axis for axis in fig.axes if axis.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == MAPS_COLOUR_BAR and "nats" in MAPS_COLOUR_BAR
    shown = torch.cat([e["entropy"][:3] for run in runs for e in run.history["entries"]])
    assert bars[0].get_ylim() == pytest.approx((float(shown.min()), float(shown.max()))), "one scale, all panels"
    rows = [axis.get_ylabel() for axis in fig.axes if axis.get_ylabel() and axis not in bars]
    assert rows == ["entropy", "knowledge points"] * 3
    titles = [axis.get_title() for axis in fig.axes if axis.get_title() and axis not in inputs]
    assert titles == [f"{role}-s0\nepoch {epoch}" for role in ("distilled", "baseline") for epoch in (0, 1, 2)]


def test_maps_undo_a_recorded_normalisation() -> None:
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.5]
    runs = [_maps_run("distilled", 0, mean=mean, std=std)]
    fig = _draw_maps(runs, images=1)
    assert fig is not None
    (axis,) = [axis for axis in fig.axes if axis.get_title().startswith("input")]
    assert axis.get_title() == "input"
    images = runs[0].history["images"][:1]
    expected = (images * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
    assert np.allclose(np.asarray(axis.get_images()[0].get_array()), expected[0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("kind", ["tokens", "points"])
def test_maps_of_tokens_and_point_clouds_are_drawn_one_picture_per_checkpoint(kind: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 20, (3, 6), generator=generator) if kind == "tokens" else torch.randn(3, 30, 3)
    units = inputs.shape[1]
    entries = []
    for epoch in (0, 1, 2):
        entropy = -2 + torch.rand(3, units, generator=generator)
        entries.append({"epoch": epoch, "failed": None, "entropy": entropy, "points": entropy < -1.7})
    history = {"entries": entries, "images": inputs, "masks": torch.rand(3, units, generator=generator) > 0.5}
    runs = [_run("distilled", 0, history)]
    assert maps_figure(runs, tmp_path / "maps.png") == tmp_path / "maps.png"
    fig = _draw_maps(runs, images=3)
    assert fig is not None and len(fig.axes) == 3
    for axis in fig.axes:
        picture = np.asarray(axis.get_images()[0].get_array())
        red = picture == np.array(KNOWLEDGE_POINT_RGB if kind == "points" else (1.0, 0.0, 0.0), dtype=np.float32)
        assert red.all(axis=2).sum() >= 49, "the key's swatch of the knowledge points' red is drawn under them"
