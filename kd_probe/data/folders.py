"""A folder of images plus a folder of masks, returning ``(image, label, foreground_mask)``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from kd_probe.data._files import IMAGE_EXTENSIONS, FileTripletDataset, file_inside, read_mask

__all__ = ["ImageMaskFolder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageMaskFolder(FileTripletDataset):
    """Images in class sub-folders and masks at the same relative paths in a second folder.

    Layout (any image extension; a mask may have another extension than its image)::

        images/<class>/<name>.jpg      masks/<class>/<name>.png

    Classes are the sub-folder names in sorted order (label = index). A mask pixel is foreground when
    its grey level exceeds ``mask_threshold``. Images are resized to ``image_size`` × ``image_size``
    (bilinear), masks likewise (nearest), and images normalised with ``mean``/``std``.

    Args:
        images: the image folder.
        masks: the mask folder.
        image_size: output side in pixels.
        mean, std: per-channel normalisation (ImageNet's by default).
        mask_threshold: grey level in [0, 1] above which a mask pixel is foreground.

    Raises:
        ValueError: a folder is missing or has no class sub-folders, an image has no mask (the
            first missing mask is named), or a link leads an image or mask outside its folder.

    Example::

        dataset = ImageMaskFolder("data/images", "data/masks", image_size=64)
        image, label, mask = dataset[0]
    """

    def __init__(
        self,
        images: str | Path,
        masks: str | Path,
        *,
        image_size: int = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__(image_size, tuple(mean), tuple(std), mask_threshold)
        self.images_root, self.masks_root = Path(images), Path(masks)
        self.mask_threshold = mask_threshold
        for argument, folder in (("images", self.images_root), ("masks", self.masks_root)):
            if not folder.is_dir():
                raise ValueError(f"`{argument}`={str(folder)!r} is not a folder.")
        self.classes = sorted(p.name for p in self.images_root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(
                f"`images`={str(self.images_root)!r} has no class sub-folders; expected images/<class>/<file>."
            )
        masks_by_stem = {
            p.relative_to(self.masks_root).with_suffix(""): self._inside("masks", self.masks_root, p)
            for p in self.masks_root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
        }
        self.mask_paths: list[Path] = []
        for label, name in enumerate(self.classes):
            for path in sorted((self.images_root / name).iterdir()):
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    continue
                key = path.relative_to(self.images_root).with_suffix("")
                if key not in masks_by_stem:
                    raise ValueError(
                        f"image {str(path)!r} has no mask in `masks`={str(self.masks_root)!r}; expected "
                        f"{self.masks_root / key!s}.<png|jpg|...>."
                    )
                self.samples.append((self._inside("images", self.images_root, path), label))
                self.mask_paths.append(masks_by_stem[key])
        if not self.samples:
            raise ValueError(
                f"`images`={str(self.images_root)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})."
            )

    @staticmethod
    def _inside(argument: str, folder: Path, path: Path) -> Path:
        """``path`` (found in ``folder``) unless a link leads it outside ``folder``: nothing outside is read."""
        return file_inside(folder, str(path.relative_to(folder)), f"`{argument}`={str(folder)!r}")

    def load_mask(self, index: int, height: int, width: int) -> Tensor:
        return read_mask(self.mask_paths[index], self.mask_threshold)
