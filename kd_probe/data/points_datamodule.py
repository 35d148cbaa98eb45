"""The built-in point-cloud data: a LightningDataModule of generated clouds with per-point foreground."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kd_probe.core.units import Points
from kd_probe.data._generated import GeneratedDataModule
from kd_probe.data.points import OBJECTS, _check_options, _rotation_about_z, generate_point_clouds
from kd_probe.data.shapes import _check_seed

__all__ = ["PointCloudDataModule", "PointCloudDataset"]


class PointCloudDataset(Dataset):
    """In-memory ``(points, label, foreground)`` samples: float32 ``[P, 3]``, int64, bool ``[P]``.

    ``params`` optionally holds per-cloud metadata (the generator's parameters for the built-in data). With
    ``random_rotation=True`` every item is turned about the vertical z axis by a fresh uniformly random angle (as
    the generator turns its objects; drawn from torch's global generator, so seed it for repeatable epochs); the
    foreground flags are unchanged.

    Example::

        >>> ds = PointCloudDataset(torch.zeros(2, 8, 3), torch.tensor([0, 1]), torch.ones(2, 8, dtype=torch.bool))
        >>> points, label, foreground = ds[1]
        >>> tuple(points.shape), int(label), foreground.dtype
        ((8, 3), 1, torch.bool)
    """

    def __init__(
        self,
        points: Tensor,
        labels: Tensor,
        foreground: Tensor,
        *,
        params: dict[str, Tensor] | None = None,
        random_rotation: bool = False,
    ) -> None:
        if not (len(points) == len(labels) == len(foreground)):
            raise ValueError(
                f"points, labels and foreground must have the same length, got {len(points)}, {len(labels)}, "
                f"{len(foreground)}."
            )
        if points.ndim != 3 or points.shape[-1] != 3 or foreground.shape != points.shape[:2]:
            raise ValueError(
                f"points must be [N, P, 3] and foreground [N, P] of the same size, got points "
                f"{tuple(points.shape)} and foreground {tuple(foreground.shape)}."
            )
        self.points, self.labels, self.foreground = points.float(), labels.long(), foreground.bool()
        self.params = params or {}  # per-cloud generation parameters, when the data is generated
        self.random_rotation = random_rotation

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        points = self.points[index]
        if self.random_rotation:
            points = points @ _rotation_about_z(2 * math.pi * torch.rand(())).T
        return points, self.labels[index], self.foreground[index]


class PointCloudDataModule(GeneratedDataModule[PointCloudDataset]):
    """Generated 3-D point clouds of ``num_classes`` object classes in clutter, with per-point foreground.

    Every sample is ``(points, label, foreground)``: a float cloud ``[P, 3]`` normalised to the unit ball
    (centroid at the origin), an int label (class ``c`` is ``kd_probe.data.OBJECTS[c]``) and a bool
    ``[P]`` that is true exactly on the object's points (see :func:`~kd_probe.data.generate_point_clouds`).
    Nothing is downloaded; each split is generated in :meth:`setup` from its own random stream, so it is
    the same for a given ``seed`` whatever the sizes of the other splits. The ``probe`` split is held out
    for the explanation probes and never used for training or validation; :attr:`units` (``Points()``)
    tells the probes that the inputs are point clouds.

    Args:
        num_classes: number of object classes (2–6).
        points: points per cloud.
        object_fraction: ``(low, high)``, the share of a cloud's points on the object.
        train_size, val_size, test_size, probe_size: clouds per split.
        background_bias: probability that a cloud's clutter type and side are tied to its class (a
            background shortcut); 0 means the clutter carries no label information.
        random_rotation: turn every training cloud about the z axis by a fresh random angle each time it is read.
        batch_size: batch size of every loader.
        num_workers: worker processes of every loader.
        seed: the data seed.
        with_index: the training loader's batches end with each sample's dataset index (``(..., index)``), as
            :class:`~kd_probe.losses.CRD` needs.

    Example::

        >>> dm = PointCloudDataModule(num_classes=4, points=64, train_size=64, val_size=32, test_size=32, probe_size=8)
        >>> dm.setup("fit")
        >>> points, label, foreground = dm.train_set[0]
        >>> tuple(points.shape), foreground.dtype
        ((64, 3), torch.bool)
    """

    noun = "point clouds"
    units = Points()

    def __init__(
        self,
        num_classes: int = 5,
        points: int = 256,
        object_fraction: Sequence[float] = (0.5, 0.7),
        train_size: int = 4000,
        val_size: int = 1000,
        test_size: int = 1000,
        probe_size: int = 64,
        background_bias: float = 0.0,
        random_rotation: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        with_index: bool = False,
    ) -> None:
        super().__init__()
        sizes = dict(train_size=train_size, val_size=val_size, test_size=test_size, probe_size=probe_size)
        self._check_loading(sizes, batch_size, num_workers)
        _check_options(
            count=0,
            points=points,
            num_classes=num_classes,
            object_fraction=object_fraction,
            background_bias=background_bias,
        )
        _check_seed("seed", seed)
        if not isinstance(random_rotation, bool):
            raise ValueError(f"`random_rotation` must be True or False, got {random_rotation!r}.")
        self.save_hyperparameters()
        self.num_classes, self.points = num_classes, points
        self.object_fraction = (float(object_fraction[0]), float(object_fraction[1]))
        self.background_bias, self.random_rotation, self.seed = float(background_bias), random_rotation, seed
        self.train_size, self.val_size, self.test_size, self.probe_size = train_size, val_size, test_size, probe_size
        self.class_names = OBJECTS[:num_classes]
        self._init_splits(batch_size, num_workers, with_index)

    def _generate(self, name: str, stream: int) -> PointCloudDataset:
        clouds = generate_point_clouds(
            getattr(self, f"{name}_size"),
            points=self.points,
            num_classes=self.num_classes,
            object_fraction=self.object_fraction,
            background_bias=self.background_bias,
            seed=self.seed,
            stream=stream,
        )
        return PointCloudDataset(
            clouds.points,
            clouds.labels,
            clouds.foreground,
            params=clouds.params,
            random_rotation=self.random_rotation and name == "train",
        )
