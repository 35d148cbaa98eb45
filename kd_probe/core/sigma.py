"""The σ-map engine of the knowledge-point paper: which input units a layer keeps information about.

Spec ``methods.md`` §1.1 (input units), §1.2 (the σ objective, faithful mode) and §4 (mechanics).
Pure torch, no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_probe.core._feature_graph import FeatureFunction
from kd_probe.core.layers import probing, resolve_layer, unwrap_compiled

__all__ = ["SigmaMaps", "estimate_sigma_maps", "gaussian_entropy", "image_generator", "upsample_units"]

SIGMA_INIT = 0.01  # σ at the start of the optimisation, and the uniform σ of the normaliser σ_f (spec §1.2)
SIGMA_RANGE = (1e-3, 1.0)  # σ is clamped to this range before every step (spec §1.2)
BOOST_STEPS = 20  # λ is boosted for the last 20 steps when the target entropy was not exceeded (spec §1.2)
_ENTROPY_CONSTANT = 0.5 * math.log(2.0 * math.pi * math.e)


@dataclass(frozen=True)
class SigmaMaps:
    """Result of :func:`estimate_sigma_maps`; every field is a tensor whose first dimension is the image.

    Attributes:
        sigma: ``[N, grid, grid]`` the selected noise scales σ_i (normalised-pixel units).
        entropy: ``[N, grid, grid]`` ``H_i = log σ_i + ½·log(2πe)``, nats per dimension (spec §1.2).
        mean_entropy: ``[N]`` ``Ĥ``, the mean of ``entropy`` over units (closest recorded value to the target).
        reached_target: ``[N]`` bool, ``Ĥ`` exceeded the target entropy at some recorded step.
        boosted: ``[N]`` bool, λ was multiplied by ``boost`` for the last 20 steps.
        sigma_f: ``[N]`` the normaliser ``σ_f`` (feature change under uniform σ = 0.01).
        effective: ``[N]`` bool, ``σ_f > 0`` (``False``: dead features, the map carries no information).
        step: ``[N]`` long, the index of the selected iterate (0 = the initial σ).
    """

    sigma: Tensor
    entropy: Tensor
    mean_entropy: Tensor
    reached_target: Tensor
    boosted: Tensor
    sigma_f: Tensor
    effective: Tensor
    step: Tensor

    def __len__(self) -> int:
        return self.sigma.shape[0]

    def to(self, device: torch.device | str) -> SigmaMaps:
        """The same maps with every field moved to ``device``."""
        return SigmaMaps(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @staticmethod
    def cat(parts: Sequence[SigmaMaps]) -> SigmaMaps:
        """Concatenate results along the image dimension (e.g. shards gathered from several processes)."""
        if not parts:
            raise ValueError("`parts` must hold at least one SigmaMaps.")
        return SigmaMaps(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(SigmaMaps)})


def gaussian_entropy(sigma: Tensor) -> Tensor:
    """Differential entropy of one Gaussian dimension, ``H_i = log σ_i + ½·log(2πe)`` in nats (spec §1.2).

    Example::

        >>> round(gaussian_entropy(torch.tensor(0.01)).item(), 4)
        -3.1862
    """
    return torch.log(sigma) + _ENTROPY_CONSTANT


def upsample_units(sigma: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-upsample unit maps ``[..., grid, grid]`` to pixels ``[..., 1, H, W]`` (spec §1.1).

    Pixel ``(y, x)`` belongs to unit ``(⌊y·grid/H⌋, ⌊x·grid/W⌋)``; σ is shared over the channels.
    """
    lead = sigma.shape[:-2]
    flat = sigma.reshape(-1, 1, *sigma.shape[-2:])
    return F.interpolate(flat, size=size, mode="nearest").reshape(*lead, 1, *size)


def image_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The noise generator of image ``index``: seeded by ``(seed, index)`` only, so an image's noise never
    depends on the batch it is in, the order of the batch or the number of processes (spec §4)."""
    _check_int("seed", seed, 0)
    _check_int("index", index, 0)
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return generator


def estimate_sigma_maps(
    model: nn.Module,
    images: Tensor,
    *,
    layer: str,
    grid: int = 16,
    samples: int = 96,
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
    progress: Callable[[int, int], None] | None = None,
    check: Callable[[], None] | None = None,
) -> SigmaMaps:
    """Optimise one σ map per image: the noise each input unit tolerates before ``layer``'s feature changes.

    The faithful algorithm of spec §1.2, each image an independent problem: σ (one value per unit of a
    ``grid × grid`` partition, shared over channels) starts at 0.01 and is clamped to [1e-3, 1] before every
    step; each step draws ``samples`` noise images ``ε`` and takes a plain SGD step on
    ``MSE(g(x + σ⊙ε), g(x)) / σ_f − λ·Ĥ(σ)``, with ``g`` = ReLU of the layer's output and ``σ_f`` the same
    MSE under uniform σ = 0.01. ``(σ, Ĥ)`` is recorded before every update. At step ``steps − 21``: an
    image whose ``Ĥ`` has exceeded ``target_entropy`` stops there (as the reference code does), the others
    continue with λ multiplied by ``boost``. The returned map is the recorded iterate closest to the target.

    Guarantees: the noise of image ``indices[i]`` comes from a generator seeded by ``(seed, indices[i])``,
    so any batching, order or sharding gives the same maps; the forward stops at ``layer``; at most
    ``max_batch`` perturbed images go through the model at once (gradients are accumulated); the model's
    modes, ``requires_grad`` flags, ``.grad``, BatchNorm statistics and the global RNG are left as they were.
    Runs under ``torch.no_grad()``/``torch.inference_mode()`` callers too (grad is re-enabled inside).

    Args:
        model: any ``nn.Module``; it is run in eval mode, its parameters are never modified.
        images: ``[N, C, H, W]`` float images, normalised as the model expects.
        layer: dotted module name whose output is the feature ``f(x)``.
        grid: units per side (``grid × grid`` units); at most the image's height and width.
        samples: noise samples per step (M).
        steps: SGD steps.
        lr: SGD learning rate on σ.
        lam: λ, weight of the mean entropy (7 for VGG-like nets, 6 for ResNets in the paper).
        target_entropy: ``Ĥ*``, the mean entropy the selected iterate is closest to.
        boost: factor on λ for the last 20 steps when ``Ĥ*`` has not been exceeded by step ``steps − 21``.
        feature_relu: apply ReLU to the feature before the MSE (``g = ReLU(f)``).
        seed: seed of the per-image noise generators.
        indices: global index of each image (default ``0..N-1``); pass dataset indices when sharding.
        max_batch: most perturbed images per forward; default 256 on CPU, 4096 on GPU. Memory is about the
            activations of ``max_batch`` perturbed images plus ``max(max_batch, samples)`` noise images.
        channels_last: run the model on channels-last inputs (faster convolutions); ``None`` = use it when
            the model has convolutions and gives the same feature with such inputs.
        fold_batchnorm: run a ``torch.fx`` trace of the forward up to the layer with eval-mode BatchNorm
            folded into the preceding convolutions (same feature up to float rounding, fewer passes over
            memory); used only when the model can be traced and the traced feature matches the plain one.
        progress: called as ``progress(done_steps, steps)`` after every step.
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
    _check_images(images)
    height, width = images.shape[-2:]
    _check_int("grid", grid, 1, f"at most the image size {height}×{width}", upper=min(height, width))
    _check_int("samples", samples, 1)
    _check_int("steps", steps, 1)
    _check_int("seed", seed, 0)
    for name, value in (("lr", lr), ("boost", boost)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"`lam` must be a non-negative number, got {lam!r}.")
    if not (isinstance(target_entropy, (int, float)) and math.isfinite(target_entropy)):
        raise ValueError(f"`target_entropy` must be a finite number of nats, got {target_entropy!r}.")
    if max_batch is None:
        max_batch = 4096 if images.device.type == "cuda" else 256
    _check_int("max_batch", max_batch, 1)
    index_list = _check_indices(indices, images.shape[0])
    model = unwrap_compiled(model)
    target_module = resolve_layer(model, layer)
    layer = next((name for name, module in model.named_modules() if module is target_module), layer)
    if images.shape[0] == 0:
        return _empty_maps(images, grid)

    with probing(model):
        if images.is_inference():  # an inference tensor cannot be saved for backward: take a normal copy
            images = images.clone()
        features = FeatureFunction(model, target_module, layer, feature_relu, channels_last, fold_batchnorm, images)
        optimiser = _SigmaOptimiser(features, images, index_list, grid, samples, lr, lam, seed, max_batch, check)
        return optimiser.run(steps, target_entropy, boost, progress)


class _SigmaOptimiser:
    """The batched σ optimisation of spec §1.2 over a set of independent images."""

    def __init__(
        self,
        features: FeatureFunction,
        images: Tensor,
        indices: list[int],
        grid: int,
        samples: int,
        lr: float,
        lam: float,
        seed: int,
        max_batch: int,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.features, self.images, self.grid, self.samples, self.lr = features, images, grid, samples, lr
        self.check = check
        self.size = (images.shape[-2], images.shape[-1])
        self.generators = [image_generator(seed, index, images.device) for index in indices]
        self.group = max(1, max_batch // samples)  # whole images per forward
        self.rows = min(samples, max_batch)  # noise samples per image per forward
        count = images.shape[0]
        self.lam = torch.full((count,), float(lam), dtype=images.dtype, device=images.device)
        with torch.no_grad():
            # one image per forward: a batch of one gives the same clean feature however the images are batched
            self.clean = torch.cat([features(images[i : i + 1]) for i in range(count)])
            broken = ~torch.isfinite(self.clean.flatten(1)).all(dim=1)
            if broken.any():
                raise FloatingPointError(
                    f"the feature at `layer`={features.layer!r} is NaN or infinite for {int(broken.sum())} of {count} "
                    "images (a diverged model?); no σ map can be estimated."
                )
            self.sigma_f = self._normaliser()
        self.effective = self.sigma_f > 0
        # weight of each image's summed squared error: 1 / (M · numel(g) · σ_f), 0 for non-effective images
        numel = self.clean[0].numel()
        safe = torch.where(self.effective, self.sigma_f, torch.ones_like(self.sigma_f))
        self.weight = torch.where(self.effective, 1.0 / (samples * numel * safe), torch.zeros_like(safe))

    def _noise(self, positions: list[int]) -> Tensor:
        """One step's noise ``[len(positions), M, C, H, W]``, each image from its own generator."""
        shape = (self.samples, *self.images.shape[1:])
        dtype, device = self.images.dtype, self.images.device
        return torch.stack(
            [torch.randn(shape, generator=self.generators[p], dtype=dtype, device=device) for p in positions]
        )

    def _chunks(self, positions: list[int]) -> Iterator[tuple[list[int], Tensor, slice]]:
        """Groups of images with their noise, and the sample slices that fit in ``max_batch`` rows; ``check``
        runs before each is handed out (so before each chunk's forward)."""
        for start in range(0, len(positions), self.group):
            group = positions[start : start + self.group]
            noise = self._noise(group)
            for first in range(0, self.samples, self.rows):
                if self.check is not None:
                    self.check()
                yield group, noise, slice(first, first + self.rows)

    def _squared_error(self, group: list[int], sigma: Tensor, noise: Tensor) -> Tensor:
        """Per image of ``group``: Σ over its noise samples and feature elements of ``(g(x + σ⊙ε) − g(x))²``."""
        count, rows = noise.shape[:2]
        perturbed = self.images[group].unsqueeze(1) + upsample_units(sigma, self.size).unsqueeze(1) * noise
        feature = self.features(perturbed.reshape(count * rows, *noise.shape[2:])).unflatten(0, (count, rows))
        return (feature - self.clean[group].unsqueeze(1)).square().flatten(2).sum(dim=2).sum(dim=1)

    def _normaliser(self) -> Tensor:
        """``σ_f`` of every image: the mean squared feature change under uniform σ = 0.01 (spec §1.2)."""
        total = torch.zeros(self.images.shape[0], dtype=self.images.dtype, device=self.images.device)
        for group, noise, rows in self._chunks(list(range(self.images.shape[0]))):
            sigma = torch.full((len(group), self.grid, self.grid), SIGMA_INIT, dtype=total.dtype, device=total.device)
            total[group] += self._squared_error(group, sigma, noise[:, rows])
        return total / (self.samples * self.clean[0].numel())

    def _gradient(self, positions: list[int], sigma: Tensor) -> Tensor:
        """Gradient of the §1.2 loss for the images at ``positions`` (σ rows in the same order)."""
        leaf = sigma.detach().requires_grad_(True)
        entropy_term = -(self.lam[positions] * gaussian_entropy(leaf).mean(dim=(1, 2))).sum()
        (gradient,) = torch.autograd.grad(entropy_term, leaf)
        where = {p: i for i, p in enumerate(positions)}
        live = [p for p in positions if self.effective[p]]  # dead features: only the entropy term
        for group, noise, rows in self._chunks(live):
            rows_of = [where[p] for p in group]
            part = leaf[rows_of].detach().requires_grad_(True)
            loss = (self._squared_error(group, part, noise[:, rows]) * self.weight[group]).sum()
            (grad_part,) = torch.autograd.grad(loss, part)
            gradient[rows_of] += grad_part
        return gradient

    def run(self, steps: int, target: float, boost: float, progress: Callable[[int, int], None] | None) -> SigmaMaps:
        count, device, dtype = self.images.shape[0], self.images.device, self.images.dtype
        sigma = torch.full((count, self.grid, self.grid), SIGMA_INIT, dtype=dtype, device=device)
        recorded_sigma = torch.empty((steps, count, self.grid, self.grid), dtype=dtype, device=device)
        recorded_entropy = torch.full((steps, count), math.nan, dtype=dtype, device=device)
        boosted = torch.zeros(count, dtype=torch.bool, device=device)
        active = list(range(count))
        check_step = steps - BOOST_STEPS - 1
        for step in range(steps):
            if self.check is not None:
                self.check()
            sigma[active] = sigma[active].clamp(*SIGMA_RANGE)
            recorded_sigma[step, active] = sigma[active]
            recorded_entropy[step, active] = gaussian_entropy(sigma[active]).mean(dim=(1, 2))
            sigma[active] = torch.add(sigma[active], self._gradient(active, sigma[active]), alpha=-self.lr)
            if step == check_step:
                exceeded = (recorded_entropy[: step + 1].nan_to_num(-math.inf) > target).any(dim=0)
                boosted = ~exceeded
                self.lam[boosted] *= boost
                active = [p for p in active if boosted[p]]
            if progress is not None:
                progress(step + 1, steps)
        distance = (recorded_entropy - target).abs().nan_to_num(math.inf)
        selected = distance.argmin(dim=0)
        chosen = recorded_sigma[selected, torch.arange(count, device=device)]
        return SigmaMaps(
            sigma=chosen,
            entropy=gaussian_entropy(chosen),
            mean_entropy=recorded_entropy[selected, torch.arange(count, device=device)],
            reached_target=(recorded_entropy.nan_to_num(-math.inf) > target).any(dim=0),
            boosted=boosted,
            sigma_f=self.sigma_f,
            effective=self.effective,
            step=selected,
        )


def _empty_maps(images: Tensor, grid: int) -> SigmaMaps:
    empty = images.new_empty((0, grid, grid))
    flags = torch.zeros(0, dtype=torch.bool, device=images.device)
    vector = images.new_empty(0)
    return SigmaMaps(
        empty,
        empty.clone(),
        vector,
        flags,
        flags.clone(),
        vector.clone(),
        flags.clone(),
        torch.zeros(0, dtype=torch.long, device=images.device),
    )


def _check_images(images: object) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        described = (
            f"a {images.dim()}-D {images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, Tensor)
            else type(images).__name__
        )
        hint = " (convert 0..255 pixels with `images.float() / 255`, then normalise)" if _is_pixels(images) else ""
        raise ValueError(f"`images` must be a 4-D float tensor [N, C, H, W], got {described}{hint}.")
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
        raise ValueError(f"`images` contains NaN or infinite values (in {bad} of {images.shape[0]} images).")


def _is_pixels(images: object) -> bool:
    return isinstance(images, Tensor) and images.dtype == torch.uint8


def _check_int(name: str, value: object, lower: int, expected: str = "", *, upper: int | None = None) -> None:
    valid = False
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        valid = int(value) >= lower and (upper is None or int(value) <= upper)
    if not valid:
        extra = f", {expected}" if expected else ""
        raise ValueError(f"`{name}` must be an integer ≥ {lower}{extra}, got {value!r}.")


def _check_indices(indices: Sequence[int] | Tensor | None, count: int) -> list[int]:
    if indices is None:
        return list(range(count))
    values = indices.tolist() if isinstance(indices, Tensor) else list(indices)
    if len(values) != count or not all(isinstance(v, (int, np.integer)) and v >= 0 for v in values):
        raise ValueError(f"`indices` must be {count} non-negative integers (one per image), got {indices!r}.")
    return [int(v) for v in values]
