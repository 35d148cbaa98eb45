from pathlib import Path

import numpy as np
import pytest
import torch

from kd_probe import ImageMaskFolder
from tests.data.conftest import write_image, write_mask


def _layout(root: Path) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    for c, name in enumerate(["cat", "dog"]):
        for i in range(2):
            write_image(images / name / f"{i}.jpg", 20, 30, 40 * c + 10 * i)
            mask = np.zeros((20, 30), dtype=bool)
            mask[5:15, 10 + c : 20 + c] = True
            write_mask(masks / name / f"{i}.png", mask)
    (images / "dog" / "notes.txt").write_text("not an image")
    return images, masks


def test_reads_triples_with_labels_from_folders_and_resized_masks(tmp_path: Path) -> None:
    images, masks = _layout(tmp_path)
    dataset = ImageMaskFolder(images, masks, image_size=10, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(dataset) == 4 and dataset.classes == ["cat", "dog"]
    image, label, mask = dataset[3]
    assert image.shape == (3, 10, 10) and int(label) == 1 and mask.shape == (10, 10) and mask.dtype == torch.bool
    expected = np.zeros((20, 30), dtype=bool)
    expected[5:15, 11:21] = True
    resized = torch.nn.functional.interpolate(torch.from_numpy(expected)[None, None].float(), size=(10, 10))[0, 0] > 0.5
    assert torch.equal(mask, resized)
    assert float(image.min()) >= 0 and float(image.max()) <= 1


def test_a_missing_mask_is_named(tmp_path: Path) -> None:
    images, masks = _layout(tmp_path)
    (masks / "dog" / "1.png").unlink()
    with pytest.raises(ValueError, match=r"image '.*dog/1.jpg' has no mask in `masks`="):
        ImageMaskFolder(images, masks)


def test_bad_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`images`='.*nowhere' is not a folder"):
        ImageMaskFolder(tmp_path / "nowhere", tmp_path)
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match=r"has no class sub-folders"):
        ImageMaskFolder(tmp_path / "flat", tmp_path)


@pytest.mark.parametrize(
    ("argument", "link", "target"),
    [
        ("images", "dog/2.jpg", "outside/secret.jpg"),  # an image file linked out
        ("images", "bird", "outside"),  # a class folder linked out
        ("masks", "dog/1.png", "outside/secret.png"),  # a mask file linked out
    ],
)
def test_a_link_out_of_the_folders_is_refused_naming_it(tmp_path: Path, argument: str, link: str, target: str) -> None:
    images, masks = _layout(tmp_path / "data")
    write_image(tmp_path / "outside" / "secret.jpg", 20, 30, 10)
    write_mask(tmp_path / "outside" / "secret.png", np.ones((20, 30), dtype=bool))
    folder = images if argument == "images" else masks
    if argument == "masks":
        (folder / link).unlink()
    (folder / link).symlink_to(tmp_path / target, target_is_directory=(tmp_path / target).is_dir())
    write_mask(masks / "bird" / "secret.png", np.ones((20, 30), dtype=bool))  # so a linked-in image has its mask
    write_mask(masks / "dog" / "2.png", np.ones((20, 30), dtype=bool))
    relative = link if "." in link else f"{link}/secret.jpg"
    with pytest.raises(ValueError, match=rf"`{argument}`='.*': '{relative}' is absolute or leads outside '{folder}'"):
        ImageMaskFolder(images, masks)
