"""A straightforward per-image implementation of methods §1.2: the oracle for the library's σ engine.

Written the obvious way, independently of :mod:`kd_probe.core.sigma` (only the per-image noise seeding,
part of the public contract, is shared): one image at a time, a full forward with a hook to read the
layer, ``torch.optim.SGD`` on σ, the reference code's boost / stop / closest-to-target selection.
Used by ``tests/core/test_sigma.py`` (same maps) and ``benchmarks/bench_sigma.py`` (speed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_probe.core.sigma import image_generator


def oracle_sigma_maps(
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
    first_index: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: the selected σ map ``[N, grid, grid]``, its step ``[N]`` and σ_f ``[N]``; image ``i`` has
    the global index ``first_index + i`` (its noise seed)."""
    module = dict(model.named_modules())[layer]
    size = images.shape[-2:]
    was_training = {m: m.training for m in model.modules()}
    model.eval()

    def feature(batch: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            model(batch)
        finally:
            handle.remove()
        return F.relu(captured[0]) if feature_relu else captured[0]

    maps, chosen_steps, normalisers = [], [], []
    try:
        for index in range(images.shape[0]):
            generator = image_generator(seed, first_index + index, images.device)
            x = images[index : index + 1]
            noise_shape = (samples, *x.shape[1:])
            with torch.no_grad():
                clean = feature(x)
                noise = torch.randn(noise_shape, generator=generator, device=x.device)
                uniform = F.interpolate(
                    torch.full((1, 1, grid, grid), 0.01, device=x.device), size=size, mode="nearest"
                )
                sigma_f = F.mse_loss(feature(x + uniform * noise), clean.expand(samples, *clean.shape[1:]))
            sigma = torch.full((1, 1, grid, grid), 0.01, device=x.device, requires_grad=True)
            optimizer = torch.optim.SGD([sigma], lr=lr)
            weight, history, entropies = lam, [], []
            for step in range(steps):
                with torch.no_grad():
                    sigma.clamp_(0.001, 1.0)
                entropy = (torch.log(sigma) + 0.5 * math.log(2 * math.pi * math.e)).mean()
                history.append(sigma.detach().clone())
                entropies.append(entropy.item())
                noise = torch.randn(noise_shape, generator=generator, device=x.device)
                loss = -weight * entropy
                if sigma_f > 0:
                    perturbed = x + F.interpolate(sigma, size=size, mode="nearest") * noise
                    out = feature(perturbed)
                    loss = loss + F.mse_loss(out, clean.expand_as(out)) / sigma_f
                (sigma.grad,) = torch.autograd.grad(loss, [sigma])
                optimizer.step()
                if step == steps - 21:
                    if max(entropies) > target_entropy:
                        break
                    weight *= boost
            best = min(range(len(entropies)), key=lambda i: abs(entropies[i] - target_entropy))
            maps.append(history[best][0, 0])
            chosen_steps.append(best)
            normalisers.append(sigma_f)
    finally:
        for m, mode in was_training.items():
            m.training = mode
    return torch.stack(maps), torch.tensor(chosen_steps), torch.stack(normalisers)
