"""A dataset of ``(image, label, foreground_mask)`` triples held in memory, and the image helpers shared
by every loader (pure torch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["TripletDataset", "denormalize", "normalize", "resize_image", "resize_mask"]


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(image − mean) / std`` per channel for float images in [0, 1] (``[..., C, H, W]``)."""
    m = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - m) / s


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of :func:`normalize`: back to [0, 1] pixel units."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return image * s + m


def resize_image(image: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of a float image ``[C, H, W]`` to ``[C, size, size]``."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def resize_mask(mask: Tensor, size: int) -> Tensor:
    """Nearest-neighbour resize of a bool mask ``[H, W]`` to ``[size, size]`` (stays binary)."""
    if mask.shape[-2:] == (size, size):
        return mask
    return F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5


class TripletDataset(Dataset):
    """In-memory ``(image, label, mask)`` samples.

    ``images`` are uint8 ``[N, C, H, W]`` (or float in [0, 1]); each item is the normalised float image
    ``[C, H, W]``, the int label and the bool foreground mask ``[H, W]``. ``params`` optionally holds
    per-image metadata (the generator's scene parameters for the built-in data).

    Example::

        >>> ds = TripletDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]),
        ...                     torch.zeros(2, 4, 4, dtype=torch.bool), mean=(0.5,) * 3, std=(0.25,) * 3)
        >>> image, label, mask = ds[1]
        >>> float(image[0, 0, 0]), int(label), mask.dtype
        (-2.0, 1, torch.bool)
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        masks: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        params: dict[str, Tensor] | None = None,
    ) -> None:
        if not (len(images) == len(labels) == len(masks)):
            raise ValueError(
                f"images, labels and masks must have the same length, got {len(images)}, {len(labels)}, {len(masks)}."
            )
        if images.ndim != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(
                f"images must be [N, C, H, W] and masks [N, H, W] of the same size, got images "
                f"{tuple(images.shape)} and masks {tuple(masks.shape)}."
            )
        self.images, self.labels, self.masks = images, labels.long(), masks.bool()
        self.mean, self.std = tuple(mean), tuple(std)
        self.params = params or {}  # per-image generation parameters, when the data is generated

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        image = self.images[index]
        image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return normalize(image, self.mean, self.std), self.labels[index], self.masks[index]
