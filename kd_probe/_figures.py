"""Static report figures (matplotlib, the optional ``report`` extra), each written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from kd_probe._paths import write_atomically
from kd_probe.core.dynamics import stability
from kd_probe.core.knowledge_points import unit_foreground
from kd_probe.core.render import knowledge_point_panels, point_projections, token_strips

_COLORS = {"distilled": "tab:blue", "baseline": "tab:orange"}


def _done(run: Any) -> list[dict[str, Any]]:
    return [e for e in run.history["entries"] if e.get("failed") is None and "entropy" in e]


def curves_figure(runs: list[Any], path: Path) -> Path | None:
    """N_fg, fg_ratio and the live ρ over training, distilled vs baseline (one line per run)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    drawn = False
    for run in runs:
        entries = _done(run)
        if run.role not in _COLORS or not entries:
            continue
        epochs = [e["epoch"] for e in entries]
        foreground = unit_foreground(run.history["masks"], tuple(entries[0]["entropy"].shape[1:]))
        points = torch.stack([e["points"] for e in entries])
        live_rho = [stability(points[: i + 1], foreground) for i in range(len(entries))]
        series = ([float(e["n_fg"].float().mean()) for e in entries], [e["fg_ratio"] for e in entries], live_rho)
        for axis, values in zip(axes, series, strict=True):
            axis.plot(epochs, values, marker="o", color=_COLORS[run.role], label=run.name, alpha=0.85)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for axis, title in zip(axes, ("N_fg (foreground knowledge points / image)", "fg_ratio", "ρ (live)"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    plt.close(fig)
    return path


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
            picture = point_projections(inputs, entropy, points, masks, size=64)[:, :, 64:]  # the point kinds
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
    the first baseline run (the maps explain a batch-level score, so both use the same probe batch)."""
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
    fig, axes = plt.subplots(count, columns, figsize=(1.8 * columns, 1.9 * count), squeeze=False)
    for row in range(count):
        picture = chosen[0][1]["images"][row].permute(1, 2, 0).numpy()
        axes[row][0].imshow(picture)
        for index, (run, _record, maps) in enumerate(chosen):
            for offset, kind in enumerate(("distilled", "residual")):
                axis = axes[row][1 + 2 * index + offset]
                axis.imshow(picture.mean(axis=2), cmap="gray", vmin=0, vmax=1)
                axis.imshow(maps[kind][row].numpy(), cmap="viridis", vmin=0, vmax=1, alpha=0.6)
                if row == 0:
                    axis.set_title(f"{run.name}\n{kind}, epoch {maps['epoch']}", fontsize=8)
    axes[0][0].set_title("input", fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.tight_layout()
    write_atomically(path, lambda temporary: fig.savefig(temporary, dpi=110, format="png"))
    plt.close(fig)
    return path
