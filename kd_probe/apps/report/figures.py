"""Static report figures (matplotlib, the optional ``report`` extra), each written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from kd_probe.core.dynamics import stability
from kd_probe.core.knowledge_points import unit_foreground
from kd_probe.core.render import (
    KNOWLEDGE_POINT_RGB,
    OUTLINE_RGB,
    as_rgb,
    knowledge_point_panels,
    per_image_unit,
    point_projections,
    token_strips,
)
from kd_probe.core.units import upsample_units
from kd_probe.io.paths import write_atomically

_COLORS = {"distilled": "tab:blue", "baseline": "tab:orange"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _done(run: Any) -> list[dict[str, Any]]:
    return [e for e in run.history["entries"] if e.get("failed") is None and "entropy" in e]


def curves_figure(runs: list[Any], path: Path) -> Path | None:
    """N_fg, fg_ratio and the live ρ over training, distilled vs baseline: per group the mean over seeds with
    a min–max band, and each seed as a thin line with its own marker."""
    return _saved(_draw_curves(runs), path)


def _series(run: Any) -> tuple[list[int], list[list[float]]] | None:
    """The epochs and the N_fg, fg_ratio and live ρ values of one run's successful probes."""
    entries = _done(run)
    if not entries:
        return None
    foreground = unit_foreground(run.history["masks"], tuple(entries[0]["entropy"].shape[1:]))
    points = torch.stack([e["points"] for e in entries])
    live_rho = [stability(points[: i + 1], foreground) for i in range(len(entries))]
    n_fg = [float(e["n_fg"].float().mean()) for e in entries]
    return [e["epoch"] for e in entries], [n_fg, [float(e["fg_ratio"]) for e in entries], live_rho]


def _draw_curves(runs: list[Any]) -> Figure | None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    drawn = False
    for role, color in _COLORS.items():
        group = [(run, found) for run in runs if run.role == role and (found := _series(run)) is not None]
        for index, (run, (epochs, values)) in enumerate(group):
            marker = _MARKERS[index % len(_MARKERS)]
            for axis, series in zip(axes, values, strict=True):
                if len(group) == 1:
                    axis.plot(epochs, series, marker="o", color=color, label=run.name, alpha=0.85)
                else:
                    axis.plot(
                        epochs,
                        series,
                        marker=marker,
                        markersize=3,
                        linewidth=0.7,
                        color=color,
                        alpha=0.5,
                        label=run.name,
                    )
        if len(group) > 1:
            for metric, axis in enumerate(axes):
                by_epoch: dict[int, list[float]] = {}
                for _run, (epochs, values) in group:
                    for epoch, value in zip(epochs, values[metric], strict=True):
                        by_epoch.setdefault(epoch, []).append(value)
                epochs = sorted(by_epoch)
                stacked = [torch.tensor(by_epoch[epoch], dtype=torch.float64) for epoch in epochs]
                low, high = [float(v.min()) for v in stacked], [float(v.max()) for v in stacked]
                axis.fill_between(
                    epochs,
                    low,
                    high,
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                    label=f"{role}: min–max of {len(group)} seeds",
                )
                axis.plot(
                    epochs,
                    [float(v.mean()) for v in stacked],
                    color=color,
                    linewidth=2.2,
                    label=f"{role}: mean of {len(group)} seeds",
                )
        drawn = drawn or bool(group)
    if not drawn:
        plt.close(fig)
        return None
    for axis, title in zip(axes, ("N_fg (foreground knowledge points / image)", "fg_ratio", "ρ (live)"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _saved(fig: Figure | None, path: Path) -> Path | None:
    """``fig`` written to ``path`` (its path), or ``None`` when there was nothing to draw."""
    if fig is None:
        return None
    _save(fig, path)
    return path


def _save(fig: Figure, path: Path) -> None:
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    plt.close(fig)


def maps_figure(runs: list[Any], path: Path, images: int = 3) -> Path | None:
    """Entropy maps and knowledge points of the same probe images at the first, middle and last checkpoints, for
    the first distilled and the first baseline run side by side (see :func:`_draw_maps`)."""
    return _saved(_draw_maps(runs, images), path)


def _draw_maps(runs: list[Any], images: int) -> Figure | None:
    """Per probe image the input in colour (left) and, per run and checkpoint (a column), its entropy map over
    its knowledge points (red) on the grey input with the object outlined (green); a legend names the two overlay
    colours and a colour bar gives the entropy in nats, one scale for every panel. Token sequences and point
    clouds: one picture per column (:func:`_draw_unit_maps`)."""
    chosen: list[Any] = []
    for role in ("distilled", "baseline"):
        first = next((run for run in runs if run.role == role and _done(run)), None)
        if first is not None:
            chosen.append(first)
    if not chosen:
        return None
    columns = []
    for run in chosen:
        entries = _done(run)
        picks = sorted({0, len(entries) // 2, len(entries) - 1})
        for index in picks:
            columns.append((run, entries[index]))
    history = chosen[0].history
    count = min(images, int(history["images"].shape[0]))
    if history["images"].dim() != 4:  # token sequences or point clouds: one picture per column
        return _draw_unit_maps(columns, count)
    size = (int(history["images"].shape[-2]), int(history["images"].shape[-1]))
    heat = [upsample_units(entry["entropy"][:count].float(), size)[:, 0] for _, entry in columns]
    finite = torch.cat([h[torch.isfinite(h)] for h in heat])
    low, high = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
    pictures, scaled = _display(history, count)
    fig = plt.figure(figsize=(1.7 * (len(columns) + 1) + 1.0, 3.2 * count + 0.9), layout="constrained")
    grid = fig.add_gridspec(2 * count, 1 + len(columns))
    entropy_axes = []
    for row in range(count):
        axis = fig.add_subplot(grid[2 * row : 2 * row + 2, 0])
        axis.imshow(pictures[row].permute(1, 2, 0).numpy(), interpolation="nearest")
        _bare(axis, ("input\n(min–max per image)" if scaled else "input") if row == 0 else "")
    for column, (run, entry) in enumerate(columns):
        overlay = knowledge_point_panels(
            history["images"][:count],
            entry["entropy"][:count],
            entry["points"][:count],
            history["masks"][:count],
            scale=1,
            labels=None,
            key=False,
        )[:, :, 2 * size[1] :]  # the knowledge-point overlays, one image under the other
        for row in range(count):
            axis = fig.add_subplot(grid[2 * row, 1 + column])
            axis.imshow(heat[column][row].numpy(), cmap="viridis", vmin=low, vmax=high, interpolation="nearest")
            entropy_axes.append(axis)
            _bare(axis, f"{run.name}\nepoch {entry['epoch']}" if row == 0 else "", "entropy" if column == 0 else "")
            axis = fig.add_subplot(grid[2 * row + 1, 1 + column])
            cell = overlay[:, row * size[0] : (row + 1) * size[0]]
            axis.imshow(cell.permute(1, 2, 0).numpy(), interpolation="nearest")
            _bare(axis, "", "knowledge points" if column == 0 else "")
    scale = ScalarMappable(Normalize(low, high), cmap="viridis")
    bar = fig.colorbar(scale, ax=entropy_axes, shrink=0.6, aspect=40, location="right")
    bar.set_label(MAPS_COLOUR_BAR, fontsize=8)
    handles = [
        Patch(color=KNOWLEDGE_POINT_RGB, label="knowledge point"),
        Patch(color=OUTLINE_RGB, label="object outline"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return fig


MAPS_COLOUR_BAR = "entropy (nats), one scale for all panels:\nlow = the unit's information kept, high = discarded"


def _display(history: dict[str, Any], count: int) -> tuple[Tensor, bool]:
    """The first ``count`` probe images ``[N, 3, H, W]`` in [0, 1] for display, and whether they are min–max scaled
    per image: the inputs' normalisation undone when the history records it (``mean``/``std`` per channel, as a
    data module's), else each image scaled from its lowest to its highest value (as in TensorBoard)."""
    images = history["images"][:count].detach().float().cpu()
    mean, std = history.get("mean"), history.get("std")
    if mean is not None and std is not None:
        mean, std = (torch.as_tensor(value).float().view(1, -1, 1, 1) for value in (mean, std))
        if mean.shape[1] in (1, images.shape[1]) and std.shape[1] in (1, images.shape[1]):
            return as_rgb((images * std + mean).clamp(0, 1)), False
    return per_image_unit(as_rgb(images)), True


def _bare(axis: Any, title: str, ylabel: str = "") -> None:
    """No ticks; a title and a row label when given."""
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=8)
    if ylabel:
        axis.set_ylabel(ylabel, fontsize=8)


def _draw_unit_maps(columns: list[tuple[Any, dict[str, Any]]], count: int) -> Figure:
    """The knowledge points of token sequences (strips) or point clouds (top views), one column per checkpoint,
    each with the colour key drawn under it (its entropy scale in nats, the colours of the marks)."""
    fig, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 1.8 + 1.1 * count), squeeze=False)
    for column, (run, entry) in enumerate(columns):
        inputs, masks = run.history["images"][:count], run.history["masks"][:count] > 0
        entropy, points = entry["entropy"][:count], entry["points"][:count]
        if inputs.dim() == 2:
            picture = token_strips(entropy, points, masks & ~entropy.isnan())
        else:  # the point kinds, with their key
            picture = point_projections(inputs, entropy, points, masks, size=64, labels=None)[:, :, 64:]
        axis = axes[0][column]
        axis.imshow(picture.permute(1, 2, 0).numpy(), interpolation="nearest", aspect="auto")
        _bare(axis, f"{run.name}\nepoch {entry['epoch']}")
    fig.tight_layout()
    return fig


def unicam_figure(runs: list[Any], path: Path, images: int = 4) -> Path | None:
    """UniCAM distilled and residual maps at the last probe over the same images, for the first distilled and
    the first baseline run (the maps explain a batch-level score, so both use the same probe batch); each column
    says which run and which map, and a colour bar gives the map scale."""
    return _saved(_draw_unicam(runs, images), path)


def _draw_unicam(runs: list[Any], images: int) -> Figure | None:
    chosen = []
    for role in ("distilled", "baseline"):
        for run in (r for r in runs if r.role == role):
            record = run.unicam
            done = record["maps"] if record else []  # maps are kept for the successful probes only
            if done:
                chosen.append((run, record, done[-1]))
                break
    if not chosen:
        return None
    count = min(images, int(chosen[0][1]["images"].shape[0]))
    columns = 1 + 2 * len(chosen)
    fig, axes = plt.subplots(
        count, columns, figsize=(2.1 * columns + 0.8, 1.9 * count + 0.5), squeeze=False, layout="constrained"
    )
    shown: Any = None
    for row in range(count):
        picture = chosen[0][1]["images"][row].permute(1, 2, 0).numpy()
        axes[row][0].imshow(picture)
        for index, (run, _record, maps) in enumerate(chosen):
            student = f"{run.role} student" + (f" ({run.name})" if run.name != run.role else "")
            for offset, kind in enumerate(("distilled", "residual")):
                axis = axes[row][1 + 2 * index + offset]
                axis.imshow(picture.mean(axis=2), cmap="gray", vmin=0, vmax=1)
                shown = axis.imshow(maps[kind][row].numpy(), cmap="viridis", vmin=0, vmax=1, alpha=0.6)
                if row == 0:
                    axis.set_title(f"{student}:\n{kind} map, epoch {maps['epoch']}", fontsize=8)
    axes[0][0].set_title("input", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    bar = fig.colorbar(shown, ax=axes[:, 1:].ravel().tolist(), shrink=0.9, aspect=30)
    bar.set_label("UniCAM map (each scaled to [0, 1])", fontsize=8)
    return fig


def methods_figure(evidence: Any, measures: list[Any], path: Path) -> Path:
    """A forest plot of every KD method × measure (``kd-probe report`` on several methods): one panel per
    measure, a row per method with its difference from the baseline (the mean over seed pairs) and its
    simultaneous interval — over seed pairs from two pairs on, else over probe images — and a line at 0
    (the baseline). A filled marker is a difference Holm flags at family-wise 5 %; a hollow one is not."""
    level = "seeds" if evidence.seed_pairs >= 2 else "runs"
    methods = list(evidence.methods)
    count = len(measures)
    wide = min(count, 5)
    rows = -(-count // wide)
    fig, axes = plt.subplots(
        rows, wide, figsize=(2.9 * wide, 0.6 + (0.32 * len(methods) + 0.7) * rows), squeeze=False, sharey=True
    )
    for index, axis in enumerate(axes.flat):
        if index >= count:
            axis.set_visible(False)
            continue
        column = measures[index]
        for row, method in enumerate(methods):
            found = evidence.cells[method, column.key]
            if found.note:  # too few teacher-fooled images: no value to show
                axis.text(0.0, row, "too few", fontsize=7, ha="center", va="center", color="0.4")
                continue
            shown = found.seeds if level == "seeds" else found.runs
            flagged = bool(getattr(found, f"{level}_flag"))
            color = _MARKER_COLORS[row % len(_MARKER_COLORS)]
            if shown is not None and shown.low == shown.low and shown.high == shown.high:
                axis.plot([shown.low, shown.high], [row, row], color=color, linewidth=1.6)
            axis.plot(
                [found.estimate],
                [row],
                marker="o",
                markersize=5,
                color=color,
                markerfacecolor=color if flagged else "white",
            )
        axis.axvline(0.0, color="0.4", linewidth=0.8, linestyle="--")
        axis.set_title(column.label, fontsize=9)
        axis.tick_params(labelsize=7)
        axis.set_yticks(range(len(methods)), methods)
        axis.set_ylim(len(methods) - 0.5, -0.5)
    what = "over seed pairs" if level == "seeds" else "over probe images (these runs)"
    fig.suptitle(
        f"Method − baseline, simultaneous 95 % intervals {what}; filled: Holm-flagged (family-wise 5 %)",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)
    return path


_MARKER_COLORS = ("tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
