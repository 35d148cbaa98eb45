"""Reading image and mask files (Pillow, imported only when a real-data loader is used)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kd_probe.io.paths import inside

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def file_inside(folder: Path, relative: str, source: str) -> Path:
    """``folder / relative`` when it stays inside ``folder`` (``relative`` is not absolute and neither ``..`` nor
    a link leads out), else a ``ValueError`` naming ``source`` (the index file and line, or the folder) and the path:
    the real-data loaders never read a file outside their root."""
    if inside(folder, relative) is None:
        raise ValueError(
            f"{source}: {relative!r} is absolute or leads outside {str(folder)!r} (through '..' or a link); "
            "paths must stay inside the dataset's folder."
        )
    return Path(folder) / relative


def _pil():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading image files needs Pillow: pip install 'kd_probe[data]' (or pip install pillow)."
        ) from error
    return Image


def read_image(path: Path) -> Tensor:
    """An image file as float RGB ``[3, H, W]`` in [0, 1]."""
    with _pil().open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def read_mask(path: Path, threshold: float = 0.5) -> Tensor:
    """A mask file as bool ``[H, W]``: grey level (in [0, 1]) above ``threshold``."""
    with _pil().open(path) as image:
        array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(array > threshold)


def image_size_of(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file without decoding its pixels."""
    with _pil().open(path) as image:
        width, height = image.size
    return height, width


class FileTripletDataset(torch.utils.data.Dataset):
    """Base of the real-data loaders: images read from disk, resized to ``image_size`` and normalised.

    Subclasses fill ``self.samples`` with ``(image_path, label)`` and implement :meth:`load_mask`.
    """

    def __init__(
        self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...], mask_threshold: float = 0.5
    ) -> None:
        if (
            isinstance(mask_threshold, bool)
            or not isinstance(mask_threshold, (int, float))
            or not 0 <= mask_threshold < 1
        ):
            raise ValueError(
                f"`mask_threshold` must be a grey level in [0, 1) above which a mask pixel is foreground, "
                f"got {mask_threshold!r}."
            )
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"`image_size` must be an int of at least 8 pixels, got {image_size!r}.")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"`mean` and `std` must be three numbers each (std > 0), got mean={mean!r}, std={std!r}.")
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        self.samples: list[tuple[Path, int]] = []
        self.classes: list[str] = []

    def load_mask(self, index: int, height: int, width: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        from kd_probe.data.triplets import normalize, resize_image, resize_mask

        path, label = self.samples[index]
        image = read_image(path)
        mask = self.load_mask(index, *image.shape[1:])
        if mask.shape != image.shape[1:]:
            raise ValueError(f"the mask of {path} is {tuple(mask.shape)} but the image is {tuple(image.shape[1:])}.")
        image = normalize(resize_image(image, self.image_size), self.mean, self.std)
        return image, torch.tensor(label), resize_mask(mask, self.image_size)
