"""What both σ engines share: the units, the entropy, the per-image noise seeds, the result, and the §1.2
recurrence itself (clamp, record, SGD step, step-59 stop/boost, closest-to-target selection).

The faithful engine drives the recurrence with gradients sampled from the model at every step; the secant
engine (methods §1.8) drives the same recurrence with the gradient of a quadratic surrogate fitted to a few
sampled gradients. Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor

from kd_probe.core.units import upsample_units

__all__ = [
    "BOOST_STEPS",
    "METHODS",
    "SIGMA_INIT",
    "SIGMA_RANGE",
    "Selected",
    "SigmaMaps",
    "check_int",
    "entropy_gradient",
    "gaussian_entropy",
    "image_generator",
    "mean_entropy",
    "recurrence",
    "upsample_units",
]

SIGMA_INIT = 0.01  # σ at the start of the optimisation, and the uniform σ of the normaliser σ_f (methods §1.2)
SIGMA_RANGE = (1e-3, 1.0)  # σ is clamped to this range before every step (methods §1.2)
BOOST_STEPS = 20  # λ is boosted for the last 20 steps when the target entropy was not exceeded (methods §1.2)
METHODS = ("faithful", "secant")
_ENTROPY_CONSTANT = 0.5 * math.log(2.0 * math.pi * math.e)


@dataclass(frozen=True)
class SigmaMaps:
    """Result of :func:`~kd_probe.estimate_sigma_maps`; every tensor's first dimension is the input (image,
    token sequence or point cloud).

    Attributes:
        sigma: ``[N, *units]`` the selected noise scales σ_i in input units: ``[N, grid, grid]`` for images,
            ``[N, T]`` for tokens (embedding units; NaN at padding, which is not a unit), ``[N, P]`` for points.
        entropy: ``[N, *units]`` ``H_i = log σ_i + ½·log(2πe)``, nats per dimension (methods §1.2).
        mean_entropy: ``[N]`` ``Ĥ``, the mean of ``entropy`` over units (closest recorded value to the target).
        reached_target: ``[N]`` bool, ``Ĥ`` exceeded the target entropy at some recorded step.
        boosted: ``[N]`` bool, λ was multiplied by ``boost`` for the last 20 steps.
        sigma_f: ``[N]`` the normaliser ``σ_f`` (feature change under uniform σ = 0.01).
        effective: ``[N]`` bool, ``σ_f > 0`` (``False``: dead features, the map carries no information).
        step: ``[N]`` long, the index of the selected iterate (0 = the initial σ).
        method: ``"faithful"`` (methods §1.2) or ``"secant"`` (methods §1.8), the engine that made the maps.
    """

    sigma: Tensor
    entropy: Tensor
    mean_entropy: Tensor
    reached_target: Tensor
    boosted: Tensor
    sigma_f: Tensor
    effective: Tensor
    step: Tensor
    method: str = field(default="faithful")

    def __len__(self) -> int:
        return self.sigma.shape[0]

    def to(self, device: torch.device | str) -> SigmaMaps:
        """The same maps with every tensor moved to ``device``."""
        return SigmaMaps(**{name: value.to(device) for name, value in self.tensors().items()}, method=self.method)

    def tensors(self) -> dict[str, Tensor]:
        """The per-image fields, by name (everything but ``method``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method"}

    @staticmethod
    def cat(parts: Sequence[SigmaMaps]) -> SigmaMaps:
        """Concatenate results along the image dimension (e.g. shards gathered from several processes)."""
        if not parts:
            raise ValueError("`parts` must hold at least one SigmaMaps.")
        methods = sorted({part.method for part in parts})
        if len(methods) > 1:
            raise ValueError(f"`parts` were made by different methods {methods}; maps of one method only.")
        names = parts[0].tensors()
        return SigmaMaps(**{n: torch.cat([p.tensors()[n] for p in parts]) for n in names}, method=methods[0])


def gaussian_entropy(sigma: Tensor) -> Tensor:
    """Differential entropy of one Gaussian dimension, ``H_i = log σ_i + ½·log(2πe)`` in nats (methods §1.2).

    Example::

        >>> round(gaussian_entropy(torch.tensor(0.01)).item(), 4)
        -3.1862
    """
    return torch.log(sigma) + _ENTROPY_CONSTANT


def mean_entropy(sigma: Tensor, valid: Tensor | None = None) -> Tensor:
    """``Ĥ`` per input ``[n]``: the mean of ``H_i`` over its units (methods §1.2); ``valid`` (bool, σ's shape)
    leaves out positions that are not units (padding tokens)."""
    entropy = gaussian_entropy(sigma)
    dims = tuple(range(1, sigma.dim()))
    if valid is None:
        return entropy.mean(dim=dims)
    return torch.where(valid, entropy, 0.0).sum(dim=dims) / valid.sum(dim=dims)


def entropy_gradient(sigma: Tensor, lam: Tensor, valid: Tensor | None = None) -> Tensor:
    """Gradient with respect to σ ``[n, *units]`` of the entropy term ``−λ·Ĥ(σ)`` of methods §1.2, one ``λ``
    per input (``Ĥ`` is the mean over units, so each of the ``n_units`` units gets ``−λ / (n_units σ_i)``,
    positions outside ``valid`` 0)."""
    leaf = sigma.detach().requires_grad_(True)
    with torch.enable_grad():
        term = -(lam * mean_entropy(leaf, valid)).sum()
        (gradient,) = torch.autograd.grad(term, leaf)
    return gradient


def image_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The noise generator of image ``index``: seeded by ``(seed, index)`` only, so an image's noise never
    depends on the batch it is in, the order of the batch or the number of processes (methods §4)."""
    check_int("seed", seed, 0)
    check_int("index", index, 0)
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return generator


@dataclass(frozen=True)
class Selected:
    """What :func:`recurrence` selects per image (methods §1.2)."""

    sigma: Tensor
    mean_entropy: Tensor
    reached_target: Tensor
    boosted: Tensor
    step: Tensor


def recurrence(
    gradient: Callable[[list[int], Tensor, Tensor], Tensor],
    *,
    count: int,
    shape: tuple[int, ...],
    valid: Tensor | None = None,
    steps: int,
    lr: float,
    lam: float,
    target: float,
    boost: float,
    patience: int | None = None,
    like: Tensor,
    progress: Callable[[int, int], None] | None = None,
    check: Callable[[], None] | None = None,
) -> Selected:
    """The recurrence of methods §1.2 for ``count`` independent inputs of ``shape`` units each (``valid``: which
    positions are units, default all), driven by ``gradient(positions, σ, λ)`` (the loss gradient of the
    inputs at ``positions``, their σ rows and λ values in that order).

    σ starts at 0.01 and is clamped to [1e-3, 1] before every step; ``(σ, Ĥ)`` is recorded before every
    update (plain SGD, ``lr``). At step ``steps − 21`` an image whose ``Ĥ`` has exceeded ``target`` stops; the
    others go on with λ multiplied by ``boost``. With ``patience = k`` an image also stops once its ``Ĥ`` has
    exceeded the target and ``|Ĥ − target|`` has grown for ``k`` consecutive recorded steps (later iterates are
    farther from the target while Ĥ keeps moving away). The selected iterate is the recorded one closest to
    the target. ``like`` gives the dtype and device.
    """
    device, dtype = like.device, like.dtype
    sigma = torch.full((count, *shape), SIGMA_INIT, dtype=dtype, device=device)
    recorded_sigma = torch.empty((steps, count, *shape), dtype=dtype, device=device)
    recorded_entropy = torch.full((steps, count), math.nan, dtype=dtype, device=device)
    lams = torch.full((count,), float(lam), dtype=dtype, device=device)
    boosted = torch.zeros(count, dtype=torch.bool, device=device)
    passed = torch.zeros(count, dtype=torch.bool, device=device)
    moving_away = torch.zeros(count, dtype=torch.long, device=device)
    active = list(range(count))
    check_step = steps - BOOST_STEPS - 1
    reported = 0
    index = torch.tensor(active, dtype=torch.long, device=device)  # ``active`` on the device, kept in step
    for step in range(steps):
        if not active:
            break
        if check is not None:
            check()
        sigma[index] = sigma[index].clamp(*SIGMA_RANGE)
        recorded_sigma[step, index] = sigma[index]
        recorded_entropy[step, index] = mean_entropy(sigma[index], None if valid is None else valid[index])
        if patience is not None and step > 0:
            distance = (recorded_entropy[step] - target).abs()
            farther = passed & (distance > (recorded_entropy[step - 1] - target).abs())
            moving_away = torch.where(farther, moving_away + 1, torch.zeros_like(moving_away))
        passed |= recorded_entropy[step].nan_to_num(-math.inf) > target
        if patience is not None:  # one read of the device per step, not one per input
            active, index = _keep(active, index, moving_away[index] < patience)
        if active:
            sigma[index] = torch.add(sigma[index], gradient(active, sigma[index], lams[index]), alpha=-lr)
        if step == check_step:
            boosted = ~passed
            lams[boosted] *= boost
            active, index = _keep(active, index, boosted[index])
        reported = step + 1
        if progress is not None:
            progress(reported, steps)
    if progress is not None and reported < steps:  # every image stopped early: the work is done
        progress(steps, steps)
    distance = (recorded_entropy - target).abs().nan_to_num(math.inf)
    selected = distance.argmin(dim=0)
    images = torch.arange(count, device=device)
    return Selected(
        sigma=recorded_sigma[selected, images],
        mean_entropy=recorded_entropy[selected, images],
        reached_target=passed,
        boosted=boosted,
        step=selected,
    )


def _keep(active: list[int], index: Tensor, keep: Tensor) -> tuple[list[int], Tensor]:
    """The positions of ``active`` (and of its device copy ``index``) where ``keep`` is true."""
    flags = keep.tolist()
    if all(flags):
        return active, index
    return [p for p, flag in zip(active, flags, strict=True) if flag], index[keep]


def check_int(name: str, value: object, lower: int, expected: str = "", *, upper: int | None = None) -> None:
    """An integer option ≥ ``lower`` (and ≤ ``upper``), else one sentence naming it and the value."""
    valid = False
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        valid = int(value) >= lower and (upper is None or int(value) <= upper)
    if not valid:
        extra = f", {expected}" if expected else ""
        raise ValueError(f"`{name}` must be an integer ≥ {lower}{extra}, got {value!r}.")
