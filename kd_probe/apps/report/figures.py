"""Static report figures (matplotlib, the optional ``report`` extra), each written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from kd_probe.core.dynamics import stability
from kd_probe.core.knowledge_points import unit_foreground
from kd_probe.core.render import knowledge_point_panels, point_projections, token_strips
from kd_probe.io.paths import write_atomically

_COLORS = {"distilled": "tab:blue", "baseline": "tab:orange"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _done(run: Any) -> list[dict[str, Any]]:
    return [e for e in run.history["entries"] if e.get("failed") is None and "entropy" in e]


def curves_figure(runs: list[Any], path: Path) -> Path | None:
    """N_fg, fg_ratio and the live ρ over training, distilled vs baseline: per group the mean over seeds with
    a min–max band, and each seed as a thin line with its own marker."""
    fig = _draw_curves(runs)
    if fig is None:
        return None
    _save(fig, path)
    return path


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


def _save(fig: Figure, path: Path) -> None:
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    plt.close(fig)


def maps_figure(runs: list[Any], path: Path, images: int = 3) -> Path | None:
    """Knowledge points (red) over the same probe images at the first, middle and last checkpoints, for the
    first distilled and the first baseline run side by side."""
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
    count = min(images, int(chosen[0].history["images"].shape[0]))
    if chosen[0].history["images"].dim() != 4:  # token sequences or point clouds: one picture per column
        return _unit_maps_figure(columns, count, path)
    fig, axes = plt.subplots(count, len(columns), figsize=(1.9 * len(columns), 2.0 * count), squeeze=False)
    for column, (run, entry) in enumerate(columns):
        history = run.history
        panel = knowledge_point_panels(
            history["images"][:count],
            entry["entropy"][:count],
            entry["points"][:count],
            history["masks"][:count],
            scale=1,
            labels=None,
        )
        height = panel.shape[1] // count
        width = panel.shape[2] // 3
        for row in range(count):
            cell = panel[:, row * height : (row + 1) * height, 2 * width :]  # the knowledge-point overlay
            axis = axes[row][column]
            axis.imshow(cell.permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"{run.name}\nepoch {entry['epoch']}", fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    plt.close(fig)
    return path


def _unit_maps_figure(columns: list[tuple[Any, dict[str, Any]]], count: int, path: Path) -> Path:
    """The knowledge points of token sequences (strips) or point clouds (top views), one column per checkpoint."""
    fig, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 1.2 + 1.1 * count), squeeze=False)
    for column, (run, entry) in enumerate(columns):
        inputs, masks = run.history["images"][:count], run.history["masks"][:count] > 0
        entropy, points = entry["entropy"][:count], entry["points"][:count]
        if inputs.dim() == 2:
            picture = token_strips(entropy, points, masks & ~entropy.isnan())
        else:
            picture = point_projections(inputs, entropy, points, masks, size=64, labels=None)[
                :, :, 64:
            ]  # the point kinds
        axis = axes[0][column]
        axis.imshow(picture.permute(1, 2, 0).numpy(), interpolation="nearest", aspect="auto")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{run.name}\nepoch {entry['epoch']}", fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    plt.close(fig)
    return path


def unicam_figure(runs: list[Any], path: Path, images: int = 4) -> Path | None:
    """UniCAM distilled and residual maps at the last probe over the same images, for the first distilled and
    the first baseline run (the maps explain a batch-level score, so both use the same probe batch); each column
    says which run and which map, and a colour bar gives the map scale."""
    fig = _draw_unicam(runs, images)
    if fig is None:
        return None
    _save(fig, path)
    return path


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
