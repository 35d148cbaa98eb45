"""The built-in data: a LightningDataModule of generated shapes with foreground masks."""

from __future__ import annotations

from kd_probe.data._generated import GeneratedDataModule
from kd_probe.data.shapes import SHAPES, _check_options, _check_seed, generate_shapes
from kd_probe.data.triplets import TripletDataset

__all__ = ["ShapesDataModule"]


class ShapesDataModule(GeneratedDataModule[TripletDataset]):
    """Generated images of ``num_classes`` shape classes on cluttered backgrounds, with exact masks.

    Every sample is ``(image, label, foreground_mask)``: a normalised float image ``[3, S, S]``
    (``(pixel − 0.5) / 0.25``, see :attr:`mean`/:attr:`std`), an int label (class ``c`` is
    ``kd_probe.data.SHAPES[c]``) and a bool mask ``[S, S]`` that is true exactly on the shape's pixels.
    Nothing is downloaded; each split is generated in :meth:`setup` from its own random stream, so it
    is the same for a given ``seed`` whatever the sizes of the other splits. The ``probe`` split is
    held out for the explanation probes and never used for training or validation.

    Args:
        num_classes: number of shape classes (2–8).
        image_size: side of the square images in pixels.
        train_size, val_size, test_size, probe_size: images per split.
        background_bias: probability that an image's background texture and palette are tied to its
            class (a background shortcut, as birds over water); 0 means backgrounds carry no label
            information.
        batch_size: batch size of every loader.
        num_workers: worker processes of every loader.
        seed: the data seed.
        with_index: the training loader's batches end with each sample's dataset index (``(..., index)``), as
            :class:`~kd_probe.losses.CRD` needs.

    Example::

        >>> dm = ShapesDataModule(num_classes=4, train_size=64, val_size=32, test_size=32, probe_size=8)
        >>> dm.setup("fit")
        >>> image, label, mask = dm.train_set[0]
        >>> tuple(image.shape), mask.dtype
        ((3, 32, 32), torch.bool)
    """

    noun = "images"
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(
        self,
        num_classes: int = 6,
        image_size: int = 32,
        train_size: int = 5000,
        val_size: int = 1000,
        test_size: int = 1000,
        probe_size: int = 64,
        background_bias: float = 0.0,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        with_index: bool = False,
    ) -> None:
        super().__init__()
        sizes = dict(train_size=train_size, val_size=val_size, test_size=test_size, probe_size=probe_size)
        self._check_loading(sizes, batch_size, num_workers)
        _check_options(count=0, image_size=image_size, num_classes=num_classes, background_bias=background_bias)
        _check_seed("seed", seed)
        self.save_hyperparameters()
        self.num_classes, self.image_size = num_classes, image_size
        self.class_names = SHAPES[:num_classes]
        self._sizes = dict(train=train_size, val=val_size, test=test_size, probe=probe_size)
        self._init_splits(batch_size, num_workers, with_index)

    def _generate(self, name: str, stream: int) -> TripletDataset:
        scenes = generate_shapes(
            self._sizes[name],
            image_size=self.image_size,
            num_classes=self.num_classes,
            background_bias=self.hparams["background_bias"],
            seed=self.hparams["seed"],
            stream=stream,
        )
        return TripletDataset(
            scenes.images, scenes.labels, scenes.masks, mean=self.mean, std=self.std, params=scenes.params
        )
