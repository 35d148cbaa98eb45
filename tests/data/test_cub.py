from pathlib import Path

import numpy as np
import pytest
import torch

from kd_probe import CUB200
from tests.data.conftest import write_image, write_mask

_FILES = ["001.Albatross/a_1.jpg", "001.Albatross/a_2.jpg", "002.Auklet/b_1.jpg"]


def _layout(root: Path, with_segmentations: bool = True) -> Path:
    for i, name in enumerate(_FILES, start=1):
        write_image(root / "images" / name, 16, 24, 30 * i)
        if with_segmentations and i != 2:  # image 2 has no segmentation: its box is used under "auto"
            mask = np.zeros((16, 24))
            mask[2:6, 3:9] = 1.0  # 5/5 annotators
            mask[6:8, 3:9] = 0.4  # 2/5 annotators: below the 0.5 threshold
            write_mask(root / "segmentations" / name.replace(".jpg", ".png"), mask)
    (root / "images.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(_FILES, start=1)))
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n")
    (root / "train_test_split.txt").write_text("1 1\n2 1\n3 0\n")
    (root / "bounding_boxes.txt").write_text("1 0.0 0.0 4.0 4.0\n2 4.0 2.0 8.0 10.0\n3 1.0 1.0 2.0 2.0\n")
    (root / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")
    return root


def _resized(rows: slice, columns: slice) -> torch.Tensor:
    """A 16×24 box mask, nearest-resized to 16×16 as the loader does."""
    mask = torch.zeros(16, 24, dtype=torch.bool)
    mask[rows, columns] = True
    return torch.nn.functional.interpolate(mask[None, None].float(), size=(16, 16))[0, 0] > 0.5


def test_official_split_labels_and_segmentation_masks(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    train, test = CUB200(root, "train", image_size=16), CUB200(root, "test", image_size=16)
    assert len(train) == 2 and len(test) == 1 and len(CUB200(root, "all")) == 3
    assert train.classes == ["001.Albatross", "002.Auklet"]
    assert [int(train[i][1]) for i in range(2)] == [0, 0] and int(test[0][1]) == 1
    image, _, mask = train[0]
    assert image.shape == (3, 16, 16)
    assert torch.equal(mask, _resized(slice(2, 6), slice(3, 9)))  # the 2/5-annotator rows are background


def test_boxes_when_segmentations_are_absent_or_asked_for(tmp_path: Path) -> None:
    root = _layout(tmp_path)
    _, _, auto_mask = CUB200(root, "train", image_size=16)[1]  # no segmentation file: box x=4 y=2 w=8 h=10
    assert torch.equal(auto_mask, _resized(slice(2, 12), slice(4, 12)))
    _, _, box_mask = CUB200(root, "train", image_size=16, mask_source="box")[0]  # box x=0 y=0 w=4 h=4
    assert torch.equal(box_mask, _resized(slice(0, 4), slice(0, 4)))


def test_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is not a CUB-200-2011 folder: missing images.txt, image_class_labels.txt"):
        CUB200(tmp_path)
    root = _layout(tmp_path / "cub")
    with pytest.raises(ValueError, match=r"`mask_source`='segmentation' but '.*a_2.png' does not exist"):
        CUB200(root, mask_source="segmentation")
    with pytest.raises(ValueError, match=r"`split` must be 'train', 'test' or 'all', got 'val'"):
        CUB200(root, split="val")


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("2", "/etc/passwd"),  # absolute
        ("2", "../../outside.jpg"),  # `..` out of root/images
        ("2", "001.Albatross/../../../outside.jpg"),  # `..` after a folder
        ("2", "linked/a_2.jpg"),  # a link in root/images to a folder outside root
    ],
)
def test_a_path_in_images_txt_outside_the_root_is_refused_with_file_and_line(
    tmp_path: Path, line: str, path: str
) -> None:
    root = _layout(tmp_path / "cub")
    write_image(tmp_path / "outside.jpg", 16, 24, 10)
    write_image(tmp_path / "elsewhere" / "a_2.jpg", 16, 24, 10)
    (root / "images" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    lines = (root / "images.txt").read_text().splitlines()
    lines[int(line) - 1] = f"{line} {path}"
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    expected = rf"{root / 'images.txt'}:{line}: '{path}' is absolute or leads outside '.*images'"
    with pytest.raises(ValueError, match=expected):
        CUB200(root, "all")


def test_a_segmentation_linked_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    root = _layout(tmp_path / "cub")
    write_mask(tmp_path / "secret.png", np.ones((16, 24)))
    (root / "segmentations" / "001.Albatross" / "a_2.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match=rf"{root / 'images.txt'}:2: '001.Albatross/a_2.png' is absolute or leads out"):
        CUB200(root, "all")
