"""What ``KnowledgePointProbe`` uses when an option is not given, and what it says before its first probe.

- σ settings sized for live curves during training (:data:`LIVE`): the secant engine with 2 passes of 64 samples
  (methods §1.8), measured against the paper's procedure on the probe's docs page; ``method="faithful"`` keeps the
  paper's 96 samples × 80 steps.
- λ by architecture (:func:`choose_lam`): the [KP] authors used 7 for VGG/AlexNet and 6 for ResNets; images whose
  network adds skip connections before the probed layer get 6, others 7, and the probe says which at setup.
- Before the first probe, an estimate of a training epoch from the probe's own dry run
  (:func:`estimated_epoch`); a probe expected to cost far more (:data:`WIDE_MARGIN`) is warned about with settings
  that fit (:func:`cheaper_settings`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn

from kd_probe.callbacks._guard import duration
from kd_probe.core._feature_graph import residual_additions
from kd_probe.core.sigma import DEFAULT_SAMPLES
from kd_probe.core.units import ImageGrid

__all__ = [
    "LAM_PLAIN",
    "LAM_RESIDUAL",
    "LIVE",
    "PASSES_PER_TRAINING_IMAGE",
    "WIDE_MARGIN",
    "cheaper_settings",
    "choose_lam",
    "estimated_epoch",
    "first_probe_warning",
]

LIVE = {"method": "secant", "passes": 2, "samples": 64}  # the probe's defaults (its docs page measures them)
LAM_PLAIN, LAM_RESIDUAL = 7.0, 6.0  # [KP]'s λ for VGG-like networks and for ResNets
PASSES_PER_TRAINING_IMAGE = 3  # forward, input and weight gradients: a training step's cost in σ passes
WIDE_MARGIN = 3.0  # a probe expected to cost more than this many estimated epochs is warned about before it runs
_FEWEST_SAMPLES = 16  # the fewest samples a suggestion goes down to (fidelity falls fast below: docs table)


def with_live_defaults(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with :data:`LIVE` filled in where not given (``None`` counts as not given): no ``method`` means
    the secant engine; the secant engine's ``passes`` and ``samples`` default to 2 and 64."""
    filled = dict(options)
    if filled.get("method") is None:
        filled["method"] = LIVE["method"]
    if filled["method"] == "secant":
        for key in ("passes", "samples"):
            if filled.get(key) is None:
                filled[key] = LIVE[key]
    return filled


def choose_lam(network: nn.Module, layer: str, example: Tensor, units: Any) -> tuple[float, str]:
    """λ for a probe that was not given ``lam``, and the sentence that says why: 6 when an image network adds
    skip connections before ``layer`` (a ResNet), else 7; token and point units keep 7 (the [KP] authors'
    ResNet value is for images)."""
    if units is not None and not isinstance(units, ImageGrid):
        return LAM_PLAIN, f"λ = {LAM_PLAIN:g} (the [KP] authors' value; pass `lam=` to choose another)"
    found = residual_additions(network, layer, example)
    if found is None:
        return LAM_PLAIN, (
            f"λ = {LAM_PLAIN:g}: the network could not be traced to look for skip connections; the [KP] authors "
            f"used {LAM_PLAIN:g} for VGG-like networks and {LAM_RESIDUAL:g} for ResNets (pass `lam=` to choose)"
        )
    if found:
        return LAM_RESIDUAL, (
            f"λ = {LAM_RESIDUAL:g}, the [KP] authors' value for ResNets: the network adds {found} skip "
            f"connection{'s' if found > 1 else ''} before `{layer}` (pass `lam=` to choose another)"
        )
    return LAM_PLAIN, (
        f"λ = {LAM_PLAIN:g}, the [KP] authors' value for VGG-like networks: no skip connection before `{layer}` "
        "(pass `lam=` to choose another)"
    )


def _batch_size(trainer: pl.Trainer) -> int | None:
    loader = getattr(trainer, "train_dataloader", None)
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) and size > 0 else None


def estimated_epoch(trainer: pl.Trainer, seconds_per_image: float) -> tuple[float, int] | None:
    """A training epoch's seconds, estimated before it runs, and its training images: each training image counted
    as :data:`PASSES_PER_TRAINING_IMAGE` forward and input-gradient passes to the probed layer (the dry run's
    ``seconds_per_image``). A rough figure: a real epoch also runs the rest of the network, a teacher, validation
    and data loading,
    while the dry run's timing is noisy: real epochs took 0.5–2.5× this estimate (a small ResNet, the demo's
    distilled VGG, 2-core CPU).
    ``None`` when the epoch's size is unknown (an iterable dataset, a custom batch sampler)."""
    batches = getattr(trainer, "num_training_batches", None)
    size = _batch_size(trainer)
    if not isinstance(batches, int) or batches <= 0 or size is None or not math.isfinite(seconds_per_image):
        return None
    return PASSES_PER_TRAINING_IMAGE * batches * size * seconds_per_image, batches * size


def cheaper_settings(
    options: Mapping[str, Any], images: int, expected: float, budget: float, epoch: float | None = None
) -> str:
    """Settings whose probe costs about ``budget`` seconds instead of ``expected``: fewer samples (down to 16), then
    fewer probe images; for the faithful engine, the secant one; always also probing every so many epochs of
    ``epoch`` seconds (``budget`` when not given) that a probe costs about one epoch's training."""
    scale = budget / expected
    every = math.ceil(expected / (epoch or budget))
    method = str(options.get("method", LIVE["method"]))
    samples = int(options.get("samples") or DEFAULT_SAMPLES[method])
    if method == "faithful":
        first = "method='secant' (the probe's default, 2 passes × 64 samples: the docs page measures it)"
    else:
        fewer = min(samples, max(_FEWEST_SAMPLES, 8 * math.floor(samples * scale / 8)))
        left = scale * samples / fewer  # what fewer samples leave to save
        shown = max(1, math.floor(images * left))
        first = f"samples={fewer}" if fewer < samples else ""
        if shown < images:
            first += f"{' and ' if first else ''}{shown} of the {images} probe images"
    return f"{first}, or " * bool(first) + f"probe every {every} epochs (`every_n_epochs={every}`)"


def first_probe_warning(
    expected: float | None, epoch: tuple[float, int] | None, gap: float, options: Mapping[str, Any], images: int
) -> str | None:
    """What to say before the first probe, or ``None``: a probe ``expected`` to cost more than :data:`WIDE_MARGIN`
    times the training between two probes (``epoch`` = estimated seconds and images of a training epoch,
    :func:`estimated_epoch`; ``gap`` = mean epochs between probes), with settings that would fit it."""
    if expected is None or epoch is None:
        return None
    seconds, training_images = epoch
    if expected <= WIDE_MARGIN * seconds * gap:
        return None
    between = f"the {gap:g} epochs between two probes" if gap > 1 else "a training epoch"
    return (
        f"a probe is expected to take about {duration(expected)}, about {expected / (seconds * gap):.0f}× "
        f"{between} (an epoch estimated at {duration(seconds)} for {training_images} training images from the "
        f"probe's own forward speed); settings that fit: {cheaper_settings(options, images, expected, seconds * gap, seconds)}"
        ". Training goes on with the settings given."
    )
