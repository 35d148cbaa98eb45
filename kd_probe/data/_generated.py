"""What the built-in data modules share: each split generated on first use from its own random stream, cached,
and served by loaders (pure Lightning plumbing; the generators live in ``shapes``, ``sentiment``, ``points``)."""

from __future__ import annotations

import time
from typing import Generic, TypeVar

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

__all__ = ["SPLITS", "GeneratedDataModule", "WithIndex"]

SPLITS = ("train", "val", "test", "probe")  # a split's index is its random stream
SplitSet = TypeVar("SplitSet", bound=Dataset)


class WithIndex(Dataset):
    """A dataset whose items end with their index: ``(*item, index)`` (what CRD's memory bank needs, methods §6)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple:
        item = self.dataset[index]
        return (*item, index) if isinstance(item, tuple) else (item, index)


class GeneratedDataModule(pl.LightningDataModule, Generic[SplitSet]):
    """Generated ``train``/``val``/``test``/``probe`` splits: a subclass implements :meth:`_generate` (one split
    from its stream) and sets :attr:`noun`; the ``probe`` split is held out for the explanation callbacks."""

    noun = "samples"

    @staticmethod
    def _check_loading(sizes: dict[str, int], batch_size: int, num_workers: int) -> None:
        """One sentence for a split size, ``batch_size`` or ``num_workers`` that is not a fitting int."""
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"`num_workers` must be a non-negative int, got {num_workers!r}.")

    def _init_splits(self, batch_size: int, num_workers: int, with_index: bool = False) -> None:
        if not isinstance(with_index, bool):
            raise ValueError(f"`with_index` must be True or False, got {with_index!r}.")
        self.batch_size, self.num_workers, self.with_index = batch_size, num_workers, with_index
        self._sets: dict[str, SplitSet] = {}

    def _generate(self, name: str, stream: int) -> SplitSet:  # pragma: no cover - abstract
        raise NotImplementedError

    def _split(self, name: str) -> SplitSet:
        if name not in self._sets:
            start = time.perf_counter()
            self._sets[name] = self._generate(name, SPLITS.index(name))
            count = len(self._sets[name])  # type: ignore[arg-type]
            rank_zero_info(f"kd_probe: generated {count} {name} {self.noun} in {time.perf_counter() - start:.1f} s")
        return self._sets[name]

    @property
    def train_set(self) -> SplitSet:
        return self._split("train")

    @property
    def val_set(self) -> SplitSet:
        return self._split("val")

    @property
    def test_set(self) -> SplitSet:
        return self._split("test")

    @property
    def probe_set(self) -> SplitSet:
        """The held-out probe split, for the explanation callbacks."""
        return self._split("probe")

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in wanted.get(stage or "", SPLITS):
            self._split(name)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        split = self._split(name)
        return DataLoader(
            WithIndex(split) if self.with_index and name == "train" else split,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def probe_dataloader(self) -> DataLoader:
        """Loader of the held-out probe split, in a fixed order."""
        return self._loader("probe", shuffle=False)
