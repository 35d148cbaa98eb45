"""Knowledge points and their quality (methods §1.3), pure torch.

A unit of an image is a knowledge point when its entropy is clearly below the background's:
``H̄ − H_i > b``. Counting them on the foreground and the background of each image gives ``N_fg``,
``N_bg`` and the foreground ratio ``λ_fg``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KnowledgePoints",
    "background_baseline",
    "count_knowledge_points",
    "downsample_mask",
    "effective_images",
    "foreground_ratio",
    "image_foreground_ratios",
    "unit_foreground",
]


@dataclass(frozen=True)
class KnowledgePoints:
    """Result of :func:`count_knowledge_points` for ``N`` images at one checkpoint.

    Attributes:
        points: ``[N, grid, grid]`` bool, the knowledge points.
        foreground: ``[N, grid, grid]`` bool, the foreground units (mask nearest-downsampled).
        n_fg: ``[N]`` long, knowledge points on the foreground.
        n_bg: ``[N]`` long, knowledge points on the background.
        fg_ratio: ``λ_fg``, mean over images of ``N_fg / (N_fg + N_bg)``, 0 for an image without points.
        fg_ratio_with_points: the same mean over the images that have points (NaN when none has).
        baseline: ``[N]`` the background entropy ``H̄`` each image was compared with (one value repeated
            for ``baseline="dataset"`` or a float; NaN where an image had no baseline).
        effective: ``[N]`` bool, the images that took part (the others have no points and are left out of
            the baseline and the ratios).
    """

    points: Tensor
    foreground: Tensor
    n_fg: Tensor
    n_bg: Tensor
    fg_ratio: float
    fg_ratio_with_points: float
    baseline: Tensor
    effective: Tensor


def downsample_mask(mask: Tensor, grid: int, *, argument: str = "fg_mask") -> Tensor:
    """Foreground units ``[N, grid, grid]`` (bool) of masks ``[N, H, W]`` or ``[N, 1, H, W]``: a unit is
    foreground iff the mask nearest-downsampled to the unit grid is > 0 (methods §1.3). Masks already at unit
    resolution are only compared with 0.

    Example::

        >>> mask = torch.zeros(1, 8, 8); mask[:, :4, :4] = 1
        >>> downsample_mask(mask, 2).int().tolist()
        [[[1, 0], [0, 0]]]
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"`grid` must be an integer ≥ 1 (units per side), got {grid!r}.")
    if not isinstance(mask, Tensor) or mask.dim() not in (3, 4) or (mask.dim() == 4 and mask.shape[1] != 1):
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"`{argument}` must be masks [N, H, W] or [N, 1, H, W], got {shape}.")
    if mask.dim() == 4:
        mask = mask[:, 0]
    height, width = mask.shape[-2:]
    if height < grid or width < grid:
        raise ValueError(
            f"`{argument}` of size {height}×{width} is smaller than the {grid}×{grid} unit grid; pass masks at "
            "image or unit resolution."
        )
    if (height, width) != (grid, grid):
        mask = F.interpolate(mask[:, None].float(), size=(grid, grid), mode="nearest")[:, 0]
    return mask > 0


def unit_foreground(fg_mask: Tensor, units: tuple[int, ...], *, argument: str = "fg_mask") -> Tensor:
    """The foreground units ``[N, *units]`` (bool) of ``fg_mask``: image masks are nearest-downsampled to a
    ``grid × grid`` unit grid (:func:`downsample_mask`); token and point units (``units = (U,)``) take
    per-unit flags ``[N, U]`` as they are (foreground is ``> 0``)."""
    if len(units) == 2:
        return downsample_mask(fg_mask, units[-1], argument=argument)
    if not isinstance(fg_mask, Tensor) or fg_mask.dim() != 2 or fg_mask.shape[1] != units[0]:
        shape = tuple(fg_mask.shape) if isinstance(fg_mask, Tensor) else type(fg_mask).__name__
        raise ValueError(f"`{argument}` must hold per-unit foreground flags [N, {units[0]}], got {shape}.")
    return fg_mask > 0


def background_baseline(
    entropy: Tensor, foreground: Tensor, *, baseline: str | float = "dataset", effective: Tensor | None = None
) -> Tensor:
    """``H̄`` per image ``[N]`` (methods §1.3).

    ``"dataset"``: the mean over (effective) images of each image's mean background entropy — one value for
    the network and checkpoint, repeated; ``"image"``: each image's own mean background entropy; a float:
    that value for every image (to compare networks on one baseline). An image without background units
    has no baseline of its own (NaN) and is left out of the dataset mean. Positions whose entropy is NaN are
    not units (padding tokens) and count nowhere.
    """
    count = entropy.shape[0]
    dims = tuple(range(1, entropy.dim()))
    background = ~foreground & ~entropy.isnan()
    per_image = torch.where(background, entropy, 0.0).sum(dim=dims) / background.sum(dim=dims)  # NaN if none
    if isinstance(baseline, bool):
        raise ValueError(f"`baseline` must be 'dataset', 'image' or a finite number of nats, got {baseline!r}.")
    if isinstance(baseline, (int, float)):
        if not math.isfinite(baseline):
            raise ValueError(f"`baseline` must be 'dataset', 'image' or a finite number of nats, got {baseline!r}.")
        return entropy.new_full((count,), float(baseline))
    if baseline == "image":
        return per_image
    if baseline == "dataset":
        usable = ~per_image.isnan() if effective is None else (~per_image.isnan() & effective)
        value = per_image[usable].mean() if usable.any() else entropy.new_tensor(math.nan)
        return value.expand(count).clone()
    raise ValueError(f"`baseline` must be 'dataset', 'image' or a finite number of nats, got {baseline!r}.")


def foreground_ratio(n_fg: Tensor, n_bg: Tensor) -> tuple[float, float]:
    """``λ_fg`` (methods §1.3): mean over images of ``N_fg / (N_fg + N_bg)`` with 0 for an image without
    points (the reference behaviour), and the same mean over the images that have points (NaN if none).

    Example::

        >>> foreground_ratio(torch.tensor([3, 0, 1]), torch.tensor([1, 0, 1]))
        (0.4166666666666667, 0.625)
    """
    if not (isinstance(n_fg, Tensor) and isinstance(n_bg, Tensor) and n_fg.dim() == 1 and n_fg.shape == n_bg.shape):
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (n_fg, n_bg)]
        raise ValueError(
            f"`n_fg` and `n_bg` must be counts [N] of the same images, got shapes {shapes[0]} and {shapes[1]}."
        )
    if n_fg.numel() == 0:
        return math.nan, math.nan
    ratio = image_foreground_ratios(n_fg, n_bg)
    with_points = ratio[(n_fg + n_bg) > 0]
    return float(ratio.mean()), float(with_points.mean()) if with_points.numel() else math.nan


def image_foreground_ratios(n_fg: Tensor, n_bg: Tensor) -> Tensor:
    """Per image ``N_fg / (N_fg + N_bg)`` ``[N]`` (float64), 0 for an image without points (methods §1.3, the
    reference behaviour); :func:`foreground_ratio` is their mean.

    Example::

        >>> image_foreground_ratios(torch.tensor([3, 0]), torch.tensor([1, 0])).tolist()
        [0.75, 0.0]
    """
    total = n_fg + n_bg
    return torch.where(total > 0, n_fg.double() / total.clamp(min=1).double(), torch.zeros((), dtype=torch.double))


def count_knowledge_points(
    entropy: Tensor,
    fg_mask: Tensor,
    *,
    threshold: float = 0.2,
    baseline: str | float = "dataset",
    effective: Tensor | None = None,
) -> KnowledgePoints:
    """Knowledge points of ``N`` images at one checkpoint of one network (methods §1.3).

    Unit ``i`` is a knowledge point iff ``H̄ − H_i > threshold`` (nats); ``N_fg``/``N_bg`` count them on the
    foreground / background units.

    Args:
        entropy: ``[N, grid, grid]`` entropy maps of images, or ``[N, U]`` of token / point units
            (``SigmaMaps.entropy``; NaN marks positions that are not units, e.g. padding).
        fg_mask: images: foreground masks ``[N, H, W]`` (or ``[N, 1, H, W]``) at image resolution,
            nearest-downsampled to the grid, or already at unit resolution; tokens and points: per-unit flags
            ``[N, U]``. Foreground is ``> 0``.
        threshold: ``b`` in nats.
        baseline: ``"dataset"``, ``"image"`` or a float (see :func:`background_baseline`).
        effective: ``[N]`` bool, images to use (e.g. ``SigmaMaps.effective``); the others get no points and
            are left out of the baseline and the ratios. Default: all.

    Example::

        >>> entropy = torch.full((1, 2, 2), -3.0); entropy[0, 0, 0] = -3.5
        >>> mask = torch.tensor([[[1, 0], [0, 0]]])
        >>> kp = count_knowledge_points(entropy, mask)
        >>> kp.n_fg.tolist(), kp.n_bg.tolist(), kp.fg_ratio
        ([1], [0], 1.0)
    """
    if not isinstance(entropy, Tensor) or entropy.dim() not in (2, 3) or not entropy.is_floating_point():
        given = f"{tuple(entropy.shape)} {entropy.dtype}" if isinstance(entropy, Tensor) else type(entropy).__name__
        raise ValueError(f"`entropy` must be float maps [N, grid, grid] or [N, units], got {given}.")
    check_threshold(threshold)
    count = entropy.shape[0]
    if entropy.dim() == 3 and entropy.shape[-2] != entropy.shape[-1]:
        raise ValueError(f"`entropy` maps must be square [N, grid, grid], got {tuple(entropy.shape)}.")
    if not isinstance(fg_mask, Tensor) or fg_mask.shape[0] != count:
        shape = tuple(fg_mask.shape) if isinstance(fg_mask, Tensor) else type(fg_mask).__name__
        raise ValueError(
            f"`fg_mask` of shape {shape} does not match `entropy` of shape {tuple(entropy.shape)}: "
            "one mask per map is expected."
        )
    foreground = unit_foreground(fg_mask.to(entropy.device), tuple(entropy.shape[1:]))
    if effective is None:
        effective = torch.ones(count, dtype=torch.bool, device=entropy.device)
    elif not isinstance(effective, Tensor) or effective.shape != (count,):
        shape = tuple(effective.shape) if isinstance(effective, Tensor) else type(effective).__name__
        raise ValueError(f"`effective` must be a bool tensor of shape ({count},), got {shape}.")
    effective = effective.to(device=entropy.device, dtype=torch.bool)
    reference = background_baseline(entropy, foreground, baseline=baseline, effective=effective)
    per_unit = (-1,) + (1,) * (entropy.dim() - 1)
    points = (reference.view(per_unit) - entropy > threshold) & effective.view(per_unit)  # NaN: never a point
    dims = tuple(range(1, entropy.dim()))
    n_fg = (points & foreground).sum(dim=dims)
    n_bg = (points & ~foreground).sum(dim=dims)
    ratio, ratio_with_points = foreground_ratio(n_fg[effective], n_bg[effective])
    return KnowledgePoints(points, foreground, n_fg, n_bg, ratio, ratio_with_points, reference, effective)


def check_threshold(threshold: object) -> None:
    """``threshold`` (``b``, nats) must be a finite number ≥ 0: a unit is a point when ``H̄ − H_i > b``."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"`threshold` must be a finite number of nats ≥ 0, got {threshold!r}.")
    if not math.isfinite(threshold):
        raise ValueError(f"`threshold` must be a finite number of nats ≥ 0, got {threshold!r}.")


def effective_images(sigma_f: Tensor, entropy: Tensor, fg_mask: Tensor, *, late: Sequence[bool] | Tensor) -> Tensor:
    """The effective-image filter of the reference code (methods §1.3), ``[N]`` bool (True = keep).

    An image is dropped when its ``σ_f`` is 0 at any checkpoint, or when at any late checkpoint (the paper:
    epochs ≥ 40 of 150) its mean foreground entropy exceeds its mean background entropy (or either mean is
    undefined). To compare two networks, use the intersection (``keep_a & keep_b``).

    Args:
        sigma_f: ``[checkpoints, N]`` normalisers (``SigmaMaps.sigma_f`` of every checkpoint).
        entropy: ``[checkpoints, N, grid, grid]`` entropy maps (or ``[checkpoints, N, U]`` token / point units).
        fg_mask: ``[N, H, W]`` masks at image or unit resolution (``[N, U]`` flags for token / point units).
        late: ``[checkpoints]`` bool, which checkpoints count as late.
    """
    if sigma_f.dim() != 2 or entropy.dim() not in (3, 4) or entropy.shape[:2] != sigma_f.shape:
        raise ValueError(
            f"`sigma_f` [checkpoints, N] and `entropy` [checkpoints, N, grid, grid] must agree, got "
            f"{tuple(sigma_f.shape)} and {tuple(entropy.shape)}."
        )
    late_mask = torch.as_tensor(late, dtype=torch.bool, device=entropy.device)
    if late_mask.shape != (entropy.shape[0],):
        raise ValueError(
            f"`late` must hold one flag per checkpoint ({entropy.shape[0]}), got {tuple(late_mask.shape)}."
        )
    foreground = unit_foreground(fg_mask.to(entropy.device), tuple(entropy.shape[2:]))
    units = ~entropy.isnan()
    on_fg, on_bg = foreground & units, ~foreground & units
    dims = tuple(range(2, entropy.dim()))
    fg_mean = torch.where(on_fg, entropy, 0.0).sum(dim=dims) / on_fg.sum(dim=dims)
    bg_mean = torch.where(on_bg, entropy, 0.0).sum(dim=dims) / on_bg.sum(dim=dims)
    alive = (sigma_f > 0).all(dim=0)
    consistent = ~(bg_mean - fg_mean < 0) & ~(bg_mean - fg_mean).isnan()  # [checkpoints, N]
    return alive & (consistent | ~late_mask[:, None]).all(dim=0)
