"""The two σ engines: faithful (methods §1.2, a sampled gradient at every step) and secant (methods §1.8, a
quadratic surrogate fitted to a few sampled gradients), over a set of independent inputs (images, token
sequences, point clouds; :mod:`kd_probe.core.units`). Pure torch.

Both draw the noise of input ``i`` from its own generator (:func:`image_generator`, seeded by the input's
global index), in the same order whatever the batch, so batching, order and sharding never change a map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import Tensor

from kd_probe.core._feature_graph import FeatureFunction
from kd_probe.core._sigma_common import (
    SIGMA_INIT,
    Selected,
    SigmaMaps,
    entropy_gradient,
    gaussian_entropy,
    image_generator,
    recurrence,
)
from kd_probe.core.memory import is_out_of_memory
from kd_probe.core.precision import bfloat16_forward
from kd_probe.core.units import BoundUnits

_T = TypeVar("_T")

__all__ = ["SampledObjective", "faithful_maps", "secant_maps"]


class SampledObjective:
    """The feature term of methods §1.2 sampled with per-input noise: ``Σ`` over noise samples and feature elements
    of ``(g(x + σ⊙ε) − g(x))²`` and its gradient with respect to σ, at most ``max_batch`` perturbed inputs per
    forward (gradients accumulated over chunks). ``units`` says how σ enters the input (§1.1).

    With ``precision="bf16"`` (methods §4.6) the forwards of the sampled gradients (and of the memory's trial pass)
    run under bfloat16 autocast, against a clean feature computed the same way, their features cast back to the
    inputs' float type before the squared error; ``σ_f`` (the normaliser, and the error it is taken from) comes
    from the same noise through the float32 forward: bfloat16's rounding of the features adds to their change at
    σ = 0.01 and would inflate it. σ, the noise and everything after the features stay in the inputs' type."""

    def __init__(
        self,
        features: FeatureFunction,
        units: BoundUnits,
        indices: list[int],
        samples: int,
        seed: int,
        max_batch: int,
        check: Callable[[], None] | None = None,
        noise_device: torch.device | str | None = None,
        precision: str | None = None,
    ) -> None:
        self.units, self.samples, self.check, self.layer = units, samples, check, features.layer
        inputs = units.inputs
        self.dtype = torch.get_default_dtype() if not inputs.is_floating_point() else inputs.dtype
        self.device = inputs.device
        self.features, self.reduced = features, precision == "bf16"
        self.count = inputs.shape[0]
        self.noise_device = torch.device(noise_device) if noise_device is not None else inputs.device
        self.generators = [image_generator(seed, index, self.noise_device) for index in indices]
        self.set_max_batch(max_batch)
        self.halved_from: int | None = None  # the batch an out-of-memory error first halved, if any
        self.clean = self._clean(features)
        self.sampled: tuple[Callable[[Tensor], Tensor], Tensor] = (features, self.clean)  # the gradients' forward
        if self.reduced:
            reduced = bfloat16_forward(features, self.device.type, self.clean.dtype)
            self.sampled = (reduced, self._clean(reduced))
        broken = ~(
            torch.isfinite(self.clean.flatten(1)).all(dim=1) & torch.isfinite(self.sampled[1].flatten(1)).all(dim=1)
        )
        if broken.any():
            raise FloatingPointError(
                f"the feature at `layer`={self.layer!r} is NaN or infinite for {int(broken.sum())} of "
                f"{self.count} inputs (a diverged model?); no σ map can be estimated."
            )
        mask = units.feature_mask(list(range(self.count)), self.clean)
        self.mask = mask
        elements = self.clean[0].numel() if mask is None else mask.flatten(1).sum(dim=1)
        self.numel = torch.as_tensor(elements, dtype=self.clean.dtype, device=self.device).expand(self.count)

    def _clean(self, forward: Callable[[Tensor], Tensor]) -> Tensor:
        """The clean features ``g(x)``, one input per forward: a batch of one gives the same feature however the
        inputs are batched."""
        with torch.no_grad():
            return torch.cat([forward(self.units.inputs[i : i + 1]) for i in range(self.count)])

    def set_max_batch(self, max_batch: int) -> None:
        """Pass at most ``max_batch`` perturbed inputs through the model at once (the maps do not depend on it)."""
        self.max_batch = max_batch
        self.group = max(1, max_batch // self.samples)  # whole inputs per forward
        self.rows = min(self.samples, max_batch)  # noise samples per input per forward

    def retrying(self, positions: list[int], compute: Callable[[], _T]) -> _T:
        """``compute()``; when the device runs out of memory, halve the batch, rewind the noise generators of
        ``positions`` and compute again, so that the result is the one any batch gives (methods §4.5)."""
        states = [self.generators[p].get_state() for p in positions]
        while True:
            try:
                return compute()
            except Exception as error:  # only a device out of memory is retried
                if not is_out_of_memory(error) or self.max_batch <= 1:
                    raise
            for p, state in zip(positions, states, strict=True):
                self.generators[p].set_state(state)
            if self.halved_from is None:
                self.halved_from = self.max_batch
            self.set_max_batch(self.max_batch // 2)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def trial_cost(self, inputs: int = 8) -> float | None:
        """The device memory (bytes) of one perturbed input in a pass of the feature and its gradient, measured on
        ``inputs`` perturbed copies of the first input with noise from a generator of its own (the maps' noise is
        left untouched); ``None`` off CUDA. Resets the device's peak-memory statistics."""
        if self.device.type != "cuda":
            return None
        rows = max(1, min(inputs, self.samples, self.max_batch))
        generator = torch.Generator(device=self.device).manual_seed(0)
        noise = torch.randn(
            (1, rows, *self.units.noise_shape), generator=generator, dtype=self.dtype, device=self.device
        )
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        with torch.enable_grad():
            sigma = self.initial(1).requires_grad_(True)
            (grad,) = torch.autograd.grad(self.squared_error([0], sigma, noise).sum(), sigma)
        del grad, sigma
        torch.cuda.synchronize(self.device)
        return max(1.0, (torch.cuda.max_memory_allocated(self.device) - before) / rows)

    def initial(self, count: int) -> Tensor:
        """σ = 0.01 on every unit of ``count`` inputs."""
        return torch.full((count, *self.units.shape), SIGMA_INIT, dtype=self.clean.dtype, device=self.device)

    def _noise(self, positions: list[int]) -> Tensor:
        """One draw of noise ``[len(positions), M, *noise]``, each input from its own generator."""
        shape = (self.samples, *self.units.noise_shape)
        dtype, device = self.clean.dtype, self.noise_device
        noise = torch.stack(
            [torch.randn(shape, generator=self.generators[p], dtype=dtype, device=device) for p in positions]
        )
        return noise.to(self.device)

    def _chunks(self, positions: list[int]) -> Iterator[tuple[list[int], Tensor, slice]]:
        """Groups of inputs with their noise, and the sample slices that fit in ``max_batch`` rows; ``check``
        runs before each is handed out (so before each chunk's forward)."""
        for start in range(0, len(positions), self.group):
            group = positions[start : start + self.group]
            noise = self._noise(group)
            for first in range(0, self.samples, self.rows):
                if self.check is not None:
                    self.check()
                yield group, noise, slice(first, first + self.rows)

    def squared_error(self, group: list[int], sigma: Tensor, noise: Tensor, exact: bool = False) -> Tensor:
        """Per input of ``group``: Σ over its noise samples and feature elements of ``(g(x + σ⊙ε) − g(x))²``, through
        the sampled gradients' forward, or the float32 one when ``exact``."""
        count, rows = noise.shape[:2]
        forward, clean = (self.features, self.clean) if exact else self.sampled
        feature = self.units.features(forward, group, sigma, noise).unflatten(0, (count, rows))
        change = (feature - clean[group].unsqueeze(1)).square()
        if self.mask is not None:
            change = change * self.mask[group].unsqueeze(1)
        return change.flatten(2).sum(dim=2).sum(dim=1)

    def normaliser(self) -> Tensor:
        """``σ_f`` of every input: the mean squared feature change under uniform σ = 0.01 (methods §1.2)."""
        positions = list(range(self.count))

        def compute() -> Tensor:
            total = torch.zeros(self.count, dtype=self.clean.dtype, device=self.device)
            with torch.no_grad():
                for group, noise, rows in self._chunks(positions):
                    total[group] += self.squared_error(group, self.initial(len(group)), noise[:, rows], exact=True)
            return total

        return self.retrying(positions, compute) / (self.samples * self.numel)

    def feature_gradient(
        self, positions: list[int], sigma: Tensor, weight: Tensor, into: Tensor | None = None, exact: bool = False
    ) -> tuple[Tensor, Tensor]:
        """For the inputs at ``positions`` (σ rows in that order): the summed squared error ``[n]`` (detached)
        and the gradient of ``Σ_p weight_p · error_p`` with respect to σ ``[n, *units]`` (one fresh draw of
        noise per input), added chunk by chunk to ``into`` when given. ``exact``: the error through the float32
        forward (a pass of its own under ``precision="bf16"``, on the same noise)."""
        where = {p: i for i, p in enumerate(positions)}
        start = None if into is None else into.clone()  # a retry starts again from here

        def compute() -> tuple[Tensor, Tensor]:
            error = torch.zeros(len(positions), dtype=sigma.dtype, device=sigma.device)
            gradient = torch.zeros_like(sigma) if start is None else start.clone()
            with torch.enable_grad():
                for group, noise, rows in self._chunks(positions):
                    rows_of = [where[p] for p in group]
                    part = sigma[rows_of].detach().requires_grad_(True)
                    chunk_error = self.squared_error(group, part, noise[:, rows])
                    (grad_part,) = torch.autograd.grad((chunk_error * weight[rows_of]).sum(), part)
                    if exact and self.reduced:
                        with torch.no_grad():
                            chunk_error = self.squared_error(group, part, noise[:, rows], exact=True)
                    gradient[rows_of] += grad_part
                    error[rows_of] += chunk_error.detach()
            return error, gradient

        error, gradient = self.retrying(positions, compute)
        if into is not None:
            into.copy_(gradient)
            return error, into
        return error, gradient


def faithful_maps(
    objective: SampledObjective,
    *,
    steps: int,
    lr: float,
    lam: float,
    target: float,
    boost: float,
    patience: int | None,
    progress: Callable[[int, int], None] | None,
) -> SigmaMaps:
    """Methods §1.2: ``σ_f`` from its own draw of noise, then every step of the recurrence on a fresh sampled
    gradient of ``MSE(g(x'), g(x)) / σ_f − λ·Ĥ(σ)``."""
    sigma_f = objective.normaliser()
    effective = sigma_f > 0
    valid = objective.units.valid
    # weight of each image's summed squared error: 1 / (M · numel(g) · σ_f), 0 for non-effective images
    safe = torch.where(effective, sigma_f, torch.ones_like(sigma_f))
    weight = torch.where(effective, 1.0 / (objective.samples * objective.numel * safe), torch.zeros_like(safe))

    def gradient(positions: list[int], sigma: Tensor, lams: Tensor) -> Tensor:
        total = entropy_gradient(sigma, lams, None if valid is None else valid[positions])
        live = [i for i, p in enumerate(positions) if effective[p]]  # dead features: only the entropy term
        if live:
            live_positions = [positions[i] for i in live]
            _, total[live] = objective.feature_gradient(
                live_positions, sigma[live], weight[live_positions], total[live]
            )
        return total

    selected = recurrence(
        gradient,
        count=len(sigma_f),
        shape=objective.units.shape,
        valid=valid,
        steps=steps,
        lr=lr,
        lam=lam,
        target=target,
        boost=boost,
        patience=patience,
        like=sigma_f,
        progress=progress,
        check=objective.check,
    )
    return _maps(selected, sigma_f, effective, valid, "faithful")


def secant_maps(
    objective: SampledObjective,
    *,
    passes: int,
    steps: int,
    lr: float,
    lam: float,
    target: float,
    boost: float,
    patience: int | None,
    progress: Callable[[int, int], None] | None,
) -> SigmaMaps:
    """Methods §1.8, the secant estimator. Pass 1 samples the feature term and its gradient ``G`` at uniform
    σ = 0.01 (``σ_f`` comes from the same draw); each later pass samples ``G`` again at the map the recurrence
    selected from the passes so far. Each pass gives per-unit coefficients ``a_i = G_i / (2 σ_i)`` of a quadratic
    surrogate ``Σ_i a_i σ_i²`` of the normalised feature term (``G`` is the gradient of ``MSE / σ_f``); the
    coefficients are averaged over passes (a negative average, sampling noise on a unit the feature ignores,
    counts as 0) and the exact recurrence of §1.2 runs element-wise on the surrogate."""
    count, valid = objective.count, objective.units.valid
    positions = list(range(count))
    sigma = objective.initial(count)
    scale = (1.0 / (objective.samples * objective.numel.double())).to(sigma.dtype)
    error, raw = objective.feature_gradient(positions, sigma, scale, exact=True)  # the MSE's gradient, not yet / σ_f
    sigma_f = error * scale
    effective = sigma_f > 0
    inverse = torch.where(effective, 1.0 / torch.where(effective, sigma_f, torch.ones_like(sigma_f)), 0.0)
    total = raw * inverse.view(-1, *[1] * len(objective.units.shape)) / (2 * sigma)
    selected = None
    for done in range(1, passes + 1):
        if done > 1:
            _, raw = objective.feature_gradient(positions, sigma, scale * inverse)
            total += raw / (2 * sigma)
        coefficients = (total / done).clamp(min=0)

        def gradient(rows: list[int], sigma_rows: Tensor, lams: Tensor, a: Tensor = coefficients) -> Tensor:
            return entropy_gradient(sigma_rows, lams, None if valid is None else valid[rows]) + 2 * a[rows] * sigma_rows

        selected = recurrence(
            gradient,
            count=count,
            shape=objective.units.shape,
            valid=valid,
            steps=steps,
            lr=lr,
            lam=lam,
            target=target,
            boost=boost,
            patience=patience,
            like=sigma_f,
            check=objective.check,
        )
        sigma = selected.sigma
        if progress is not None:
            progress(done, passes)
    assert selected is not None  # passes ≥ 1
    return _maps(selected, sigma_f, effective, valid, "secant")


def _maps(selected: Selected, sigma_f: Tensor, effective: Tensor, valid: Tensor | None, method: str) -> SigmaMaps:
    sigma = selected.sigma if valid is None else selected.sigma.masked_fill(~valid, float("nan"))  # not units
    return SigmaMaps(
        sigma=sigma,
        entropy=gaussian_entropy(sigma),
        mean_entropy=selected.mean_entropy,
        reached_target=selected.reached_target,
        boosted=selected.boosted,
        sigma_f=sigma_f,
        effective=effective,
        step=selected.step,
        method=method,
    )
