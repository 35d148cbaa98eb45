"""Data with foreground masks: the built-in generated shapes and loaders for real datasets.

Every dataset yields ``(image, label, foreground_mask)``: a normalised float image ``[C, H, W]``, an
int label and a bool mask ``[H, W]``.
"""

from kd_probe.data.cub import CUB200
from kd_probe.data.datamodule import ShapesDataModule
from kd_probe.data.folders import ImageMaskFolder
from kd_probe.data.shapes import SHAPES, TEXTURES, ShapeScenes, generate_shapes
from kd_probe.data.triplets import TripletDataset, denormalize, normalize

__all__ = [
    "CUB200",
    "SHAPES",
    "TEXTURES",
    "ImageMaskFolder",
    "ShapeScenes",
    "ShapesDataModule",
    "TripletDataset",
    "denormalize",
    "generate_shapes",
    "normalize",
]
