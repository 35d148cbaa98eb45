"""Tiny real-data layouts written by the tests (Pillow writes the files)."""

from pathlib import Path

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")


def write_image(path: Path, height: int, width: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((height, width, 3), value, dtype=np.uint8)
    array[:, : width // 2, 0] = 255 - value
    Image.fromarray(array).save(path)


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(path)
