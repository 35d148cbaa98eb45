"""The CUB-200-2011 layout, returning ``(image, label, foreground_mask)``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from kd_probe.data._files import FileTripletDataset, file_inside, read_mask
from kd_probe.data.folders import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CUB200"]

_SOURCES = ("auto", "segmentation", "box")


def _read_table(path: Path, line_numbers: dict[int, int] | None = None) -> dict[int, list[str]]:
    """``<id> <fields…>`` lines → ``{id: [fields…]}`` (and ``{id: line number}`` into ``line_numbers``)."""
    table = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2 or not fields[0].isdigit():
                raise ValueError(f"{path}:{number}: expected '<id> <value> ...', got {line.strip()!r}.")
            table[int(fields[0])] = fields[1:]
            if line_numbers is not None:
                line_numbers[int(fields[0])] = number
    return table


class CUB200(FileTripletDataset):
    """Caltech-UCSD Birds-200-2011 read from its own layout (nothing is downloaded)::

        root/images.txt                 <id> <class_folder>/<file>.jpg
        root/image_class_labels.txt     <id> <class 1..200>
        root/train_test_split.txt       <id> <1 = train, 0 = test>
        root/bounding_boxes.txt         <id> <x> <y> <width> <height>   (pixels)
        root/classes.txt                <class> <name>                   (optional)
        root/images/<class_folder>/<file>.jpg
        root/segmentations/<class_folder>/<file>.png                      (optional)

    Labels are 0-based. The mask comes from the segmentation (grey level above ``mask_threshold``;
    CUB's grey levels count the annotators who marked a pixel) or, with ``mask_source="box"`` or when
    no segmentation file exists under ``mask_source="auto"``, from the bounding box. Nothing outside
    ``root/images`` and the segmentation folder is read: a path in ``images.txt`` that is absolute or leads out
    (``..``, a link) is refused with a ``ValueError`` naming the file, the line and the path.

    Args:
        root: the ``CUB_200_2011`` folder.
        split: ``"train"`` or ``"test"`` (the official split), or ``"all"``.
        image_size: output side in pixels (images and masks are resized to a square).
        mask_source: ``"auto"``, ``"segmentation"`` or ``"box"``.
        segmentations: the segmentation folder, if not ``root/segmentations``.
        mean, std: per-channel normalisation (ImageNet's by default).
        mask_threshold: grey level in [0, 1] above which a segmentation pixel is foreground.

    Example::

        birds = CUB200("data/CUB_200_2011", split="test", image_size=64)
        image, label, mask = birds[0]
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        image_size: int = 64,
        mask_source: str = "auto",
        segmentations: str | Path | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__(image_size, tuple(mean), tuple(std), mask_threshold)
        if split not in ("train", "test", "all"):
            raise ValueError(f"`split` must be 'train', 'test' or 'all', got {split!r}.")
        if mask_source not in _SOURCES:
            raise ValueError(f"`mask_source` must be one of {_SOURCES}, got {mask_source!r}.")
        self.root = Path(root)
        self.segmentation_root = Path(segmentations) if segmentations is not None else self.root / "segmentations"
        self.mask_source, self.mask_threshold = mask_source, mask_threshold
        needed = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")
        missing = [name for name in needed if not (self.root / name).is_file()]
        if missing:
            raise ValueError(f"`root`={str(self.root)!r} is not a CUB-200-2011 folder: missing {', '.join(missing)}.")
        lines: dict[int, int] = {}  # images.txt's line of each image id, to name it when its path is refused
        paths, labels, is_train, boxes = (
            _read_table(self.root / name, lines if name == "images.txt" else None) for name in needed
        )
        for name, table in zip(needed[1:], (labels, is_train, boxes), strict=True):
            missing_ids = sorted(set(paths) - set(table))
            if missing_ids:
                raise ValueError(
                    f"{self.root / name} has no line for image ids {missing_ids[:5]} of images.txt; "
                    "every image needs one line in each table."
                )
        bad_labels = sorted({v[0] for v in labels.values() if not v[0].isdigit() or int(v[0]) < 1})
        if bad_labels:
            raise ValueError(
                f"{self.root / 'image_class_labels.txt'} holds classes {bad_labels[:5]}; CUB's classes are "
                "numbered from 1."
            )
        classes_file = self.root / "classes.txt"
        names = {k: v[0] for k, v in _read_table(classes_file).items()} if classes_file.is_file() else {}
        num_classes = max(int(v[0]) for v in labels.values())
        self.classes = [names.get(c, str(c)) for c in range(1, num_classes + 1)]
        self.boxes: list[tuple[float, float, float, float]] = []
        self.segmentation_paths: list[Path | None] = []
        for image_id in sorted(paths):
            if split != "all" and (is_train[image_id][0] == "1") != (split == "train"):
                continue
            source = f"{self.root / 'images.txt'}:{lines[image_id]}"
            image = file_inside(self.root / "images", paths[image_id][0], source)  # never a file outside root
            relative = Path(paths[image_id][0])
            self.samples.append((image, int(labels[image_id][0]) - 1))
            self.boxes.append(tuple(float(v) for v in boxes[image_id][:4]))  # type: ignore[arg-type]
            segmentation = file_inside(self.segmentation_root, str(relative.with_suffix(".png")), source)
            if mask_source == "segmentation" and not segmentation.is_file():
                raise ValueError(f"`mask_source`='segmentation' but {str(segmentation)!r} does not exist.")
            self.segmentation_paths.append(segmentation if mask_source != "box" and segmentation.is_file() else None)

    def load_mask(self, index: int, height: int, width: int) -> Tensor:
        segmentation = self.segmentation_paths[index]
        if segmentation is not None:
            return read_mask(segmentation, self.mask_threshold)
        x, y, w, h = self.boxes[index]
        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[max(0, round(y)) : min(height, round(y + h)), max(0, round(x)) : min(width, round(x + w))] = True
        return mask
