import pytest
import torch

from kd_probe import ShapesDataModule
from kd_probe.data import denormalize


def _dm(**kw: object) -> ShapesDataModule:
    options = dict(num_classes=4, train_size=50, val_size=20, test_size=20, probe_size=8, batch_size=16)
    options.update(kw)
    return ShapesDataModule(**options)  # type: ignore[arg-type]


def test_splits_have_their_sizes_and_are_deterministic_by_seed() -> None:
    a, b = _dm(), _dm()
    a.setup("fit")
    assert (len(a.train_set), len(a.val_set), len(a.test_set), len(a.probe_set)) == (50, 20, 20, 8)
    for split in ("train_set", "probe_set"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
    assert not torch.equal(_dm(seed=1).train_set.images, a.train_set.images)


def test_a_split_does_not_change_with_the_size_of_another() -> None:
    assert torch.equal(_dm(train_size=10).probe_set.images, _dm(train_size=90).probe_set.images)


def test_splits_are_different_images() -> None:
    dm = _dm()
    train, probe = dm.train_set.images.flatten(1), dm.probe_set.images.flatten(1)
    assert not any(bool((train == row).all(1).any()) for row in probe)


def test_batches_are_normalised_triples() -> None:
    dm = _dm()
    dm.setup("fit")
    images, labels, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and masks.shape == (16, 32, 32) and masks.dtype == torch.bool
    pixels = denormalize(images, dm.mean, dm.std)
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 1
    probe_images, _, probe_masks = next(iter(dm.probe_dataloader()))
    torch.testing.assert_close(denormalize(probe_images, dm.mean, dm.std) * 255, dm.probe_set.images.float())
    assert torch.equal(probe_masks, dm.probe_set.masks)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(train_size=-1), r"`train_size` must be a non-negative int, got -1"),
        (dict(batch_size=0), r"`batch_size` must be a positive int, got 0"),
        (dict(num_classes=1), r"`num_classes` must be an int from 2 to 8"),
    ],
)
def test_bad_options_are_refused_at_construction(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _dm(**kw)
