"""Learning speed, stability and weight-update direction (methods §1.4–1.6), pure torch."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "CountSketch",
    "cosine",
    "image_stability",
    "learning_speed",
    "normalised_step",
    "path_efficiency",
    "stability",
    "travel_until_learned",
]


def learning_speed(n_fg_history: Tensor, distances: Tensor) -> tuple[float, float, float]:
    """``(D_mean, D_std, D_var)`` of methods §1.4.

    Per image, ``m̂(x) = argmax_c N_fg(x, c)`` over the probed checkpoints (ties → the earliest); ``D(m̂(x))``
    is the weight path length travelled until then; ``D_mean`` and ``D_std`` are the population mean and
    standard deviation (ddof 0) over images, ``D_var`` the variance (the reference code's "std").

    Args:
        n_fg_history: ``[checkpoints, N]`` foreground knowledge points per checkpoint and image.
        distances: ``[checkpoints]`` cumulative path length ``D(c)`` at each checkpoint.

    Example::

        >>> learning_speed(torch.tensor([[0, 3], [2, 3], [1, 1]]), torch.tensor([0.0, 1.0, 2.5]))
        (0.5, 0.5, 0.25)
    """
    if n_fg_history.dim() != 2 or distances.shape != (n_fg_history.shape[0],):
        raise ValueError(
            f"`n_fg_history` [checkpoints, N] and `distances` [checkpoints] must agree, got "
            f"{tuple(n_fg_history.shape)} and {tuple(distances.shape)}."
        )
    if n_fg_history.numel() == 0:
        return math.nan, math.nan, math.nan
    travelled = travel_until_learned(n_fg_history, distances)
    variance = float(travelled.var(unbiased=False))
    return float(travelled.mean()), math.sqrt(variance), variance


def travel_until_learned(n_fg_history: Tensor, distances: Tensor) -> Tensor:
    """Per image ``D(m̂(x))`` ``[N]`` (float64), methods §1.4: the path length at ``m̂(x) = argmax_c N_fg(x, c)``
    (ties → the earliest checkpoint); :func:`learning_speed` takes its mean and spread. Shapes as there."""
    learned_at = torch.argmax(n_fg_history, dim=0)  # first maximum: ties go to the earliest checkpoint
    return distances.double().to(learned_at.device)[learned_at]


def stability(points_history: Tensor, fg_mask: Tensor | None = None) -> float:
    """``ρ`` of methods §1.5: mean over images of ``|S_final(x)| / |∪_c S_c(x)|``, an empty union counting 0.

    ``S_c(x)`` are the knowledge points of image ``x`` at checkpoint ``c`` (the last checkpoint is "final";
    for the live value pass the history up to now); units are ``[grid, grid]`` cells of images or ``[U]``
    tokens / points. With ``fg_mask`` (``[N, *units]`` bool foreground units) only foreground points count (the headline ``rho``); without it all units (``rho_all``).

    Example::

        >>> history = torch.tensor([[[1, 1, 0]], [[0, 1, 0]]], dtype=torch.bool)  # 2 checkpoints, 1 image
        >>> stability(history.reshape(2, 1, 1, 3))
        0.5
    """
    values = image_stability(points_history, fg_mask)
    return float(values.mean()) if values.numel() else math.nan


def image_stability(points_history: Tensor, fg_mask: Tensor | None = None) -> Tensor:
    """Per image ``ρ(x) = |S_final(x)| / |∪_c S_c(x)|`` ``[N]`` (float64, 0 for an empty union), methods §1.5;
    :func:`stability` is their mean. Arguments as there."""
    if points_history.dim() not in (3, 4):
        raise ValueError(
            f"`points_history` must be [checkpoints, N, grid, grid] or [checkpoints, N, units], got "
            f"{tuple(points_history.shape)}."
        )
    points = points_history.bool()
    if fg_mask is not None and tuple(fg_mask.shape) != tuple(points.shape[1:]):
        raise ValueError(
            f"`fg_mask` of shape {tuple(fg_mask.shape)} does not match `points_history` of shape "
            f"{tuple(points.shape)}: one foreground per input, shape {tuple(points.shape[1:])}, is expected."
        )
    if fg_mask is not None:
        points = points & fg_mask.bool().to(points.device)[None]
    union = points.any(dim=0).flatten(1).sum(dim=1).double()
    final = points[-1].flatten(1).sum(dim=1).double()
    return torch.where(union > 0, final / union.clamp(min=1), torch.zeros_like(union))


def normalised_step(previous: Tensor, current: Tensor, initial_norm: float) -> float:
    """``d_t = ‖W_{t+1} − W_t‖_F / ‖W_0‖_F`` (methods §1.4): one optimizer step's length relative to the start."""
    if previous.shape != current.shape:
        raise ValueError(
            f"`previous` and `current` must be the same weights, got shapes {tuple(previous.shape)} and "
            f"{tuple(current.shape)}."
        )
    _check_length("initial_norm", initial_norm)
    return float(torch.linalg.vector_norm((current - previous).double())) / max(initial_norm, 1e-30)


def cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two flattened tensors (methods §1.6); NaN when either is zero."""
    if a.numel() != b.numel():
        raise ValueError(
            f"`a` and `b` must hold as many numbers, got {a.numel()} {tuple(a.shape)} and {b.numel()} {tuple(b.shape)}."
        )
    a, b = a.flatten().double(), b.flatten().double()
    norms = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(a @ b) / norms if norms > 0 else math.nan


def path_efficiency(displacement_norm: float, path_length: float) -> float:
    """``‖W_final − W_0‖ / Σ_t ‖W_{t+1} − W_t‖`` (methods §1.6): 1 for a straight line; NaN before any step."""
    _check_length("displacement_norm", displacement_norm)
    _check_length("path_length", path_length)
    return displacement_norm / path_length if path_length > 0 else math.nan


def _check_length(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite norm ≥ 0, got {value!r}.")


class CountSketch:
    """A fixed random projection of long weight vectors to ``size`` numbers (count sketch, seeded).

    Coordinate ``i`` is added with a random sign to bucket ``h(i)``; inner products (hence norms and
    cosines) are preserved in expectation, with a relative error of about ``sqrt(2 / size)``. Memory: the
    bucket/sign tables (5 bytes per weight) instead of a full copy per snapshot.
    """

    def __init__(self, length: int, size: int, seed: int = 0, device: torch.device | str = "cpu") -> None:
        generator = torch.Generator().manual_seed(seed)
        self.size = size
        self.buckets = torch.randint(size, (length,), generator=generator, dtype=torch.int64).to(torch.int32)
        self.signs = (torch.randint(2, (length,), generator=generator, dtype=torch.int8) * 2 - 1).to(device)
        self.buckets = self.buckets.to(device)

    def __call__(self, vector: Tensor) -> Tensor:
        sketch = torch.zeros(self.size, dtype=torch.float64, device=vector.device)
        return sketch.index_add_(0, self.buckets.long(), vector.double() * self.signs)
