"""What one σ probe of ``KnowledgePointProbe`` amounts to: its method, its units of work (steps or passes) for
the progress bar, and a timed dry run that estimates its cost before training."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from kd_probe.callbacks._guard import clock
from kd_probe.core.memory import CPU_BATCH, MOST_BATCH
from kd_probe.core.sigma import DEFAULT_PASSES, DEFAULT_SAMPLES, estimate_sigma_maps

__all__ = ["SigmaCost", "estimate_sigma_cost", "sigma_work"]


class SigmaCost(NamedTuple):
    """A probe's expected cost: its seconds, what they cover (in words), and the seconds of one perturbed image's
    forward and input-gradient pass to the layer (what an estimate of a training epoch starts from)."""

    seconds: float
    detail: str
    per_image: float


def sigma_work(options: Mapping[str, Any]) -> tuple[str, int, str]:
    """``(method, units of work, unit name)``: faithful probes count steps, secant probes count passes."""
    method = str(options.get("method", "faithful"))
    if method == "secant":
        return method, int(options.get("passes") or DEFAULT_PASSES), "pass"
    return method, int(options.get("steps", 80)), "step"


def estimate_sigma_cost(
    network: nn.Module, images: Tensor, layer: str, options: Mapping[str, Any], world_size: int, device: torch.device
) -> SigmaCost:
    """Seconds per probe, what they cover and the seconds per perturbed image, from a dry run on ``device`` with one forward group of the probe
    images (4 steps, or 2 passes), timed per unit of work after the first and scaled to this rank's images and
    the real work. Only that group visits the device."""
    method, units, unit = sigma_work(options)
    plural = "passes" if unit == "pass" else "steps"
    samples = int(options.get("samples") or DEFAULT_SAMPLES[method])
    max_batch = options.get("max_batch") or (MOST_BATCH if device.type == "cuda" else CPU_BATCH)
    per_rank = math.ceil(images.shape[0] / world_size)
    group = min(per_rank, max(1, max_batch // samples))  # images that share one forward
    ticks: list[float] = []
    dry = {**options, "passes": 2} if method == "secant" else {**options, "steps": 4}
    start = clock()
    estimate_sigma_maps(
        network, images[:group].to(device), layer=layer, progress=lambda *_: ticks.append(clock()), **dry
    )
    per_unit = (ticks[-1] - ticks[0]) / (len(ticks) - 1)
    fixed = max(ticks[0] - start - per_unit, 0.0)  # σ_f (faithful) and the images' reference features
    processes = f" on each of {world_size} processes" if world_size > 1 else ""
    detail = f"{images.shape[0]} images, {method}, {samples} samples × {units} {plural}{processes}"
    seconds = math.ceil(per_rank / group) * (units * per_unit + fixed)
    return SigmaCost(seconds, detail, per_unit / (group * samples))  # a step or pass: `samples` per image
