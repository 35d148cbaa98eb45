"""Data with foreground masks: the built-in generated shapes and loaders for real datasets.

Every dataset yields ``(image, label, foreground_mask)``: a normalised float image ``[C, H, W]``, an
int label and a bool mask ``[H, W]``. The generated point clouds yield ``(points, label, foreground)``:
a float cloud ``[P, 3]``, an int label and a bool flag per point.
"""

from kd_probe.data.cub import CUB200
from kd_probe.data.datamodule import ShapesDataModule
from kd_probe.data.folders import ImageMaskFolder
from kd_probe.data.points import OBJECTS, PointClouds, generate_point_clouds
from kd_probe.data.points_datamodule import PointCloudDataModule, PointCloudDataset
from kd_probe.data.sentiment import SentenceSet, generate_sentences
from kd_probe.data.sentiment_datamodule import SentimentDataModule, TokenDataset
from kd_probe.data.shapes import SHAPES, TEXTURES, ShapeScenes, generate_shapes
from kd_probe.data.triplets import TripletDataset, denormalize, normalize

__all__ = [
    "CUB200",
    "OBJECTS",
    "SHAPES",
    "TEXTURES",
    "ImageMaskFolder",
    "PointCloudDataModule",
    "PointCloudDataset",
    "PointClouds",
    "SentenceSet",
    "SentimentDataModule",
    "ShapeScenes",
    "ShapesDataModule",
    "TokenDataset",
    "TripletDataset",
    "denormalize",
    "generate_point_clouds",
    "generate_sentences",
    "generate_shapes",
    "normalize",
]
