"""The probed layer's weight path length and the history-level metrics of a KnowledgePointProbe (§1.4–1.5)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_probe.core.dynamics import learning_speed, normalised_step, stability
from kd_probe.core.knowledge_points import count_knowledge_points
from kd_probe.core.layers import modules_through
from kd_probe.io.paths import write_atomically
from kd_probe.io.tags import KNOWLEDGE_POINTS, SIGMA, tag

__all__ = [
    "PathLength",
    "checkpoint_fields",
    "checkpoint_scalars",
    "final_metrics",
    "history_metrics",
    "tracked_weight_note",
    "write_summary",
]


class PathLength:
    """``D``: the sum over optimizer steps of ``‖W_{t+1} − W_t‖ / ‖W_0‖`` for one layer's weight (methods §1.4).

    The weight is the probed layer's own (a parameter ``weight`` with at least 2 dimensions: convolutions,
    linear layers); for a layer without one (an activation, a normalisation, a pooling) the nearest module
    before it in execution order that has one.
    """

    def __init__(self) -> None:
        self.module_name: str | None = None
        self.distance = 0.0
        self.initial_norm: float | None = None
        self._previous: Tensor | None = None
        self._last_step = -1

    def choose(self, network: nn.Module, layer: str, example: Tensor) -> str:
        names = modules_through(network, layer, example)
        candidates = [name for name in names if _weight(network.get_submodule(name)) is not None]
        if not candidates:
            raise ValueError(f"`layer`={layer!r}: neither it nor any module before it has a weight to track.")
        self.module_name = layer if layer in candidates else candidates[-1]
        return self.module_name

    def _current(self, network: nn.Module) -> Tensor:
        assert self.module_name is not None
        weight = _weight(network.get_submodule(self.module_name))
        assert weight is not None
        return weight.detach().clone()

    def start(self, network: nn.Module, global_step: int) -> None:
        """At the start of fit (fresh or resumed): the current weights are the previous step's."""
        self._previous = self._current(network)
        self._last_step = global_step
        if self.initial_norm is None:
            self.initial_norm = float(torch.linalg.vector_norm(self._previous.double()))

    def update(self, network: nn.Module, global_step: int) -> None:
        """After a training batch: add the step's length when an optimizer step happened."""
        if self._previous is None or global_step == self._last_step:
            return
        current = self._current(network)
        self.distance += normalised_step(self._previous, current, self.initial_norm or 0.0)
        self._previous, self._last_step = current, global_step

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module_name, "distance": self.distance, "initial_norm": self.initial_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.distance = float(state.get("distance", 0.0))
        self.initial_norm = state.get("initial_norm")


def _weight(module: nn.Module) -> Tensor | None:
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, Tensor) and weight.dim() >= 2 else None


def history_metrics(history: list[dict[str, Any]], foreground: Tensor) -> dict[str, float]:
    """``d_mean``, ``d_std``, ``d_var``, ``rho``, ``rho_all`` over the successful checkpoints so far (the last
    one plays "final"), and the last checkpoint's path length ``weight_distance``."""
    done = [entry for entry in history if entry.get("failed") is None and "n_fg" in entry]
    if not done:
        return {}
    n_fg = torch.stack([entry["n_fg"] for entry in done])
    distances = torch.tensor([entry.get("distance", math.nan) for entry in done], dtype=torch.float64)
    d_mean, d_std, d_var = learning_speed(n_fg, distances)
    points = torch.stack([entry["points"] for entry in done])
    return {
        "d_mean": d_mean,
        "d_std": d_std,
        "d_var": d_var,
        "rho": stability(points, foreground),
        "rho_all": stability(points),
        "weight_distance": float(distances[-1]),
    }


def final_metrics(history: list[dict[str, Any]], foreground: Tensor) -> dict[str, float]:
    """The summary's final metrics: ``n_fg``, ``n_bg`` (means over the effective images of the last successful
    checkpoint), ``fg_ratio``, ``fg_ratio_with_points`` of that checkpoint and :func:`history_metrics`; NaN for
    what no successful checkpoint gives."""
    done = [entry for entry in history if entry.get("failed") is None and "n_fg" in entry]
    last = done[-1] if done else None
    used = last["effective"] if last is not None and last["effective"].any() else None

    def mean(key: str) -> float:
        if last is None:
            return math.nan
        values = last[key][used] if used is not None else last[key]
        return float(values.float().mean())

    return {
        "n_fg": mean("n_fg"),
        "n_bg": mean("n_bg"),
        "fg_ratio": last["fg_ratio"] if last else math.nan,
        "fg_ratio_with_points": last["fg_ratio_with_points"] if last else math.nan,
        **{"d_mean": math.nan, "d_std": math.nan, "d_var": math.nan, "rho": math.nan, "rho_all": math.nan},
        **history_metrics(history, foreground),
    }


def write_summary(path: Path, history: list[dict[str, Any]], foreground: Tensor, extra: dict[str, Any]) -> None:
    """``kd_probe_summary.json``: every final metric, the checkpoints and the settings (atomically)."""
    summary = {
        **extra,
        **final_metrics(history, foreground),
        "checkpoints": [
            {
                "epoch": entry["epoch"],
                "global_step": entry["global_step"],
                "distance": entry.get("distance"),
                "failed": entry.get("failed"),
                "n_fg": float(entry["n_fg"].float().mean()) if "n_fg" in entry else None,
                "n_bg": float(entry["n_bg"].float().mean()) if "n_bg" in entry else None,
                "fg_ratio": entry.get("fg_ratio"),
            }
            for entry in history
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2, default=_jsonable, allow_nan=True)
    write_atomically(path, lambda temporary: temporary.write_text(text))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def checkpoint_fields(
    maps: dict[str, Tensor], masks: Tensor, *, threshold: float, baseline: str | float
) -> dict[str, Any]:
    """One checkpoint's history fields from the gathered σ-map fields: the maps themselves and the knowledge
    points counted on the images with ``σ_f > 0`` (methods §1.3)."""
    effective = maps["effective"] > 0.5
    points = count_knowledge_points(maps["entropy"], masks, threshold=threshold, baseline=baseline, effective=effective)
    used = effective if effective.any() else torch.ones_like(effective)
    return {
        "entropy": maps["entropy"],
        "sigma_f": maps["sigma_f"],
        "effective": effective,
        "reached_target": maps["reached_target"] > 0.5,
        "boosted": maps["boosted"] > 0.5,
        "step": maps["step"].long(),
        "points": points.points,
        "n_fg": points.n_fg,
        "n_bg": points.n_bg,
        "fg_ratio": points.fg_ratio,
        "fg_ratio_with_points": points.fg_ratio_with_points,
        "baseline": float(points.baseline[used].nanmean()),
    }


def checkpoint_scalars(entry: dict[str, Any], name: str | None = None) -> dict[str, float]:
    """The finite per-checkpoint scalars of a history entry, by tag (``1_knowledge_points[/<name>]/n_fg``, ...,
    ``7_sigma[/<name>]/effective_fraction``)."""
    effective = entry["effective"]
    used = effective if effective.any() else torch.ones_like(effective)
    scalars = {
        tag(KNOWLEDGE_POINTS, name, "n_fg"): float(entry["n_fg"][used].float().mean()),
        tag(KNOWLEDGE_POINTS, name, "n_bg"): float(entry["n_bg"][used].float().mean()),
        tag(KNOWLEDGE_POINTS, name, "fg_ratio"): entry["fg_ratio"],
        tag(KNOWLEDGE_POINTS, name, "baseline_entropy"): entry["baseline"],
        tag(SIGMA, name, "reached_target_fraction"): float(entry["reached_target"].float().mean()),
        tag(SIGMA, name, "effective_fraction"): float(effective.float().mean()),
    }
    return {key: value for key, value in scalars.items() if math.isfinite(value)}


def tracked_weight_note(network: nn.Module, layer: str, tracked: str) -> str:
    """Why the path length D (methods §1.4) follows another module's weight than ``layer``'s."""
    module = network.get_submodule(layer)
    weight = getattr(module, "weight", None)
    kind = type(module).__name__
    why = (
        f"`{layer}` ({kind}) has only a per-channel weight (a scale), not a filter bank"
        if isinstance(weight, Tensor)
        else f"`{layer}` ({kind}) has no weight"
    )
    return f"{why}; the path length D tracks the weight of `{tracked}`, the last convolution or linear layer before it."
