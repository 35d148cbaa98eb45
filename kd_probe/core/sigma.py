"""The σ-map engine of the knowledge-point paper: which input units a layer keeps information about.

Methods §1.1 (input units), §1.2 (the σ objective, faithful mode) and §4 (mechanics).
Pure torch, no Lightning.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kd_probe.core._feature_graph import FeatureFunction
from kd_probe.core._sigma_common import (
    BOOST_STEPS,
    METHODS,
    SIGMA_INIT,
    SIGMA_RANGE,
    SigmaMaps,
    gaussian_entropy,
    image_generator,
)
from kd_probe.core._sigma_common import check_int as _check_int
from kd_probe.core._sigma_engines import SampledObjective, faithful_maps, secant_maps
from kd_probe.core.layers import probing, resolve_layer, unwrap_compiled
from kd_probe.core.memory import CPU_BATCH, MOST_BATCH, batch_for_budget, budget_bytes
from kd_probe.core.precision import check_precision_mode, computes_in_float32, matmul_precision
from kd_probe.core.units import ImageGrid, Units, upsample_units

__all__ = [
    "BOOST_STEPS",
    "METHODS",
    "SIGMA_INIT",
    "SIGMA_RANGE",
    "SigmaMaps",
    "estimate_sigma_maps",
    "gaussian_entropy",
    "image_generator",
    "upsample_units",
]
DEFAULT_SAMPLES = {"faithful": 96, "secant": 256}  # noise samples per step (faithful) or per pass (secant)
DEFAULT_PASSES = 3  # secant passes (methods §1.8)


@computes_in_float32
def estimate_sigma_maps(
    model: nn.Module,
    images: Tensor,
    *,
    layer: str,
    method: str = "faithful",
    grid: int | None = None,
    units: Units | None = None,
    samples: int | None = None,
    passes: int | None = None,
    steps: int = 80,
    lr: float = 1e-4,
    lam: float = 7.0,
    target_entropy: float = -2.8,
    boost: float = 1.5,
    feature_relu: bool = True,
    seed: int = 0,
    indices: Sequence[int] | Tensor | None = None,
    max_batch: int | None = None,
    channels_last: bool | None = None,
    fold_batchnorm: bool = True,
    patience: int | None = 3,
    progress: Callable[[int, int], None] | None = None,
    check: Callable[[], None] | None = None,
    memory_budget: float | int | None = None,
    noise_device: str | None = None,
    precision: str | None = None,
) -> SigmaMaps:
    """Optimise one σ map per input: the noise each input unit tolerates before ``layer``'s feature changes.

    Inputs are images by default (``grid × grid`` units); ``units=Tokens(...)`` takes token ids ``[N, T]``
    (σ per token on the embedding's output) and ``units=Points()`` point clouds ``[N, P, 3]`` (σ per point),
    methods §1.1 and [KP-J]: one engine, one recurrence and one fixed-entropy selection for every unit type.

    The faithful algorithm of methods §1.2, each image an independent problem: σ (one value per unit of a
    ``grid × grid`` partition, shared over channels) starts at 0.01 and is clamped to [1e-3, 1] before every
    step; each step draws ``samples`` noise images ``ε`` and takes a plain SGD step on
    ``MSE(g(x + σ⊙ε), g(x)) / σ_f − λ·Ĥ(σ)``, with ``g`` = ReLU of the layer's output and ``σ_f`` the same
    MSE under uniform σ = 0.01. ``(σ, Ĥ)`` is recorded before every update. At step ``steps − 21``: an
    image whose ``Ĥ`` has exceeded ``target_entropy`` stops there (as the reference code does), the others
    continue with λ multiplied by ``boost``. The returned map is the recorded iterate closest to the target.

    ``method="secant"`` (methods §1.8) runs the same recurrence on a quadratic surrogate of the feature term
    fitted to ``passes`` sampled gradients of ``samples`` noise images each (the first at uniform σ = 0.01,
    which also gives ``σ_f``; each next one at the map selected so far), instead of sampling a gradient at
    every step: about 7× cheaper than faithful-96 with the defaults (3 passes × 256 samples), and about 20×
    with ``samples=96`` (IoU 0.885 against faithful-96 on the demo's trained VGG). With the defaults, on the
    demo's trained VGG, its knowledge points agree with faithful-96 as well as two faithful runs with
    different seeds do; untrained features agree less (see the Benchmarks page's σ table).

    Guarantees: the noise of image ``indices[i]`` comes from a generator seeded by ``(seed, indices[i])``,
    so any batching, order or sharding gives the same maps; the forward stops at ``layer``; at most
    ``max_batch`` perturbed images go through the model at once (gradients are accumulated); the model's
    modes, ``requires_grad`` flags, ``.grad``, BatchNorm statistics and the global RNG are left as they were.
    Runs under ``torch.no_grad()``/``torch.inference_mode()`` callers too (grad is re-enabled inside).
    Computes in float32 with autocast off, whatever the caller's autocast (``precision="bf16"`` excepted).

    Args:
        model: any ``nn.Module``; it is run in eval mode, its parameters are never modified.
        images: the inputs: ``[N, C, H, W]`` float images normalised as the model expects, or what ``units``
            takes (token ids ``[N, T]``, point clouds ``[N, P, 3]``).
        layer: dotted module name whose output is the feature ``f(x)``.
        method: ``"faithful"`` (methods §1.2) or ``"secant"`` (methods §1.8); recorded in the result.
        grid: images: units per side (``grid × grid`` units, default 16); at most the image's height and width.
            Same as ``units=ImageGrid(grid)``.
        units: the input units (:class:`~kd_probe.ImageGrid`, :class:`~kd_probe.Tokens`,
            :class:`~kd_probe.Points`); default ``ImageGrid(grid)``.
        samples: noise samples per step (faithful, default 96 = M of the paper) or per pass (secant, default
            256).
        passes: secant only, sampled gradients the surrogate is fitted to (default 3).
        steps: SGD steps of the recurrence.
        lr: SGD learning rate on σ.
        lam: λ, weight of the mean entropy (7 for VGG-like nets, 6 for ResNets in the paper).
        target_entropy: ``Ĥ*``, the mean entropy the selected iterate is closest to.
        boost: factor on λ for the last 20 steps when ``Ĥ*`` has not been exceeded by step ``steps − 21``.
        feature_relu: apply ReLU to the feature before the MSE (``g = ReLU(f)``).
        seed: seed of the per-image noise generators.
        indices: global index of each image (default ``0..N-1``); pass dataset indices when sharding.
        max_batch: most perturbed images per forward (the maps do not depend on it). Default: 256 on the CPU; on
            a GPU as many as fit in ``memory_budget`` at the cost of one perturbed image measured by a trial pass
            (at most 4096; methods §4.5). Memory is about the activations of ``max_batch`` perturbed images plus
            ``max(max_batch, samples)`` noise images. On a device that runs out of memory the batch is halved
            and the same computation repeated with the same noise, said once in a warning.
        memory_budget: the device memory one pass may use when ``max_batch`` is ``None`` on a GPU: a fraction of
            the free memory in ``(0, 1]`` or a number of bytes; default the smaller of 8 GiB and half the free
            memory.
        noise_device: where the noise is drawn: ``None`` on the inputs' device; ``"cpu"`` draws it with CPU
            generators and copies it over, so that a GPU uses the same noise as the CPU for the same seed (CUDA
            generators give other streams, and so other maps: methods §4.2), at the cost of the copies.
        precision: the arithmetic of the model's forwards (methods §4.6), the flags set for the call only (restored
            after it, also on an error). ``None``: float32, the TF32 flags as they are (PyTorch's defaults run cuDNN
            convolutions in TF32 on a GPU). ``"float32"``: TF32 off for CUDA matmuls and cuDNN, and IEEE float32 in
            oneDNN on the CPU. ``"tf32"``: TF32 on for CUDA matmuls and cuDNN. On a CPU at the default flags the
            three give the same maps bit for bit. ``"bf16"``: as ``"float32"``, with the forwards of the sampled
            gradients under bfloat16 autocast (σ_f through the float32 forward, on the same noise; σ, the noise and
            the recurrence in float32): other maps, as close to float32's as another seed's on the demo's VGGs (knowledge-point IoU
            0.87–0.98 against the seed-to-seed 0.79–0.94), slightly farther on a ResNet (faithful IoU 0.93 against
            0.95, entropy Pearson 0.986 against 0.998), ``|Δ fg_ratio|`` ≤ 0.01, 1.8–2.2× faster (faithful) and
            1.5–1.8× (secant) on a CPU with bfloat16 units (``benchmarks/bench_sigma.py --sections precision``).
        channels_last: run the model on channels-last inputs (faster convolutions); ``None`` = use it when
            the model has convolutions and gives the same feature with such inputs.
        fold_batchnorm: run a ``torch.fx`` trace of the forward up to the layer with eval-mode BatchNorm
            folded into the preceding convolutions (same feature up to float rounding, fewer passes over
            memory); used only when the model can be traced and the traced feature matches the plain one.
        patience: stop an image once its recorded ``Ĥ`` has exceeded the target and ``|Ĥ − target|`` has grown
            for ``patience`` consecutive steps (its later iterates, farther from the target, are not selected
            while Ĥ keeps moving away); ``None`` runs every image to step ``steps − 21`` (or to the end when
            boosted), as the paper. Measured on trained and random VGGs and a ResNet (``benchmarks/bench_sigma.py
            --sections early-stop``), patience 1–5 never changed a selected iterate, and saves 1.2–1.8× of the
            faithful engine's time; 3 keeps a margin against a wiggling Ĥ.
        progress: called as ``progress(done, total)`` after every step (faithful: ``total = steps``) or every
            pass (secant: ``total = passes``).
        check: called with no argument before every step and before every chunk's forward (normaliser and
            gradient); it may raise to abandon the work (e.g. a stop requested by the user), and the exception
            propagates unchanged with the model restored.

    Returns:
        :class:`SigmaMaps` on the device of ``images``.

    Example::

        >>> from kd_probe.models import VGG
        >>> net = VGG(num_classes=3, widths=(8,), convs_per_stage=1)
        >>> maps = estimate_sigma_maps(net, torch.randn(2, 3, 8, 8), layer="features.relu1", grid=4,
        ...                            samples=4, steps=3)
        >>> tuple(maps.entropy.shape), maps.step.tolist()
        ((2, 4, 4), [2, 2])
    """
    if units is None:
        _check_int("grid", 16 if grid is None else grid, 1)
        units = ImageGrid(16 if grid is None else int(grid))
    elif not isinstance(units, Units):
        raise ValueError(f"`units` must be ImageGrid(...), Tokens(...) or Points(...), got {units!r}.")
    elif grid is not None:
        raise ValueError(f"`grid`={grid!r} applies to images without `units`; give it as `units=ImageGrid({grid})`.")
    images = units.check_inputs(images)
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if passes is not None and method != "secant":
        raise ValueError(f"`passes`={passes!r} applies to method='secant' only, got method={method!r}.")
    samples = DEFAULT_SAMPLES[method] if samples is None else samples
    passes = DEFAULT_PASSES if passes is None else passes
    _check_int("samples", samples, 1)
    _check_int("passes", passes, 1)
    _check_int("steps", steps, 1)
    if patience is not None:
        _check_int("patience", patience, 1, "or None")
    _check_int("seed", seed, 0)
    for name, value in (("lr", lr), ("boost", boost)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"`lam` must be a non-negative number, got {lam!r}.")
    if not (isinstance(target_entropy, (int, float)) and math.isfinite(target_entropy)):
        raise ValueError(f"`target_entropy` must be a finite number of nats, got {target_entropy!r}.")
    budget = budget_bytes(memory_budget, images.device)  # checks memory_budget on every device
    check_noise_device(noise_device)
    check_precision_mode(precision)
    if max_batch is not None:
        _check_int("max_batch", max_batch, 1)
    index_list = _check_indices(indices, images.shape[0])
    model = unwrap_compiled(model)
    target_module = resolve_layer(model, layer)
    if images.shape[0] == 0:
        return _empty_maps(images, units.unit_shape(images), method)

    # the eager forward, with any compiled submodule's wrapper out of the names; TF32 as `precision` asks
    with probing(model), matmul_precision(precision):
        layer = next((name for name, module in model.named_modules() if module is target_module), layer)
        if images.is_inference():  # an inference tensor cannot be saved for backward: take a normal copy
            images = images.clone()
        bound = units.bind(model, images)
        if not bound.fold_graph:  # the noise enters through a hook: run the model's own forward
            channels_last, fold_batchnorm = False, False
        features = FeatureFunction(model, target_module, layer, feature_relu, channels_last, fold_batchnorm, images)
        objective = SampledObjective(
            features, bound, index_list, samples, seed, max_batch or CPU_BATCH, check, noise_device, precision
        )
        if max_batch is None and budget is not None:
            objective.set_max_batch(automatic_batch(objective, budget))
        options: dict[str, Any] = dict(
            steps=steps, lr=lr, lam=lam, target=target_entropy, boost=boost, patience=patience
        )
        engine = secant_maps if method == "secant" else faithful_maps
        maps = engine(objective, progress=progress, **({"passes": passes} if method == "secant" else {}), **options)
        if objective.halved_from is not None:
            warnings.warn(
                f"kd_probe: the device ran out of memory at max_batch={objective.halved_from} perturbed inputs per "
                f"pass; the σ maps were computed with max_batch={objective.max_batch} instead (the same maps, "
                f"slower). Pass max_batch={objective.max_batch} or a smaller memory_budget to start there.",
                stacklevel=2,
            )
        return maps


def check_noise_device(value: object) -> None:
    """``noise_device``: ``None`` (the inputs' device) or ``"cpu"``."""
    if value not in (None, "cpu"):
        raise ValueError(f"`noise_device` must be None (the inputs' device) or 'cpu', got {value!r}.")


def automatic_batch(objective: SampledObjective, budget: int) -> int:
    """The perturbed inputs per pass that fit in ``budget`` bytes at the trial pass's measured cost (methods §4.5);
    the largest automatic batch when the cost cannot be measured."""
    cost = objective.retrying([], objective.trial_cost)
    return MOST_BATCH if cost is None else batch_for_budget(cost, budget)


def _empty_maps(images: Tensor, shape: tuple[int, ...], method: str) -> SigmaMaps:
    dtype = images.dtype if images.is_floating_point() else torch.get_default_dtype()
    empty = torch.empty((0, *shape), dtype=dtype, device=images.device)
    flags = torch.zeros(0, dtype=torch.bool, device=images.device)
    vector = empty.new_empty(0)
    step = torch.zeros(0, dtype=torch.long, device=images.device)
    return SigmaMaps(empty, empty.clone(), vector, flags, flags.clone(), vector.clone(), flags.clone(), step, method)


def _check_indices(indices: Sequence[int] | Tensor | None, count: int) -> list[int]:
    if indices is None:
        return list(range(count))
    values = indices.tolist() if isinstance(indices, Tensor) else list(indices)
    if len(values) != count or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in values):
        raise ValueError(f"`indices` must be {count} non-negative integers (one per image), got {indices!r}.")
    return [int(v) for v in values]
