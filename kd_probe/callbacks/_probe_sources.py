"""Where a probe's held-out set comes from: tensors, a dataset or a data module given in Python, a file
(:class:`ProbeFile`), or ``"datamodule"`` — the probe split of the Trainer's data module, read at ``setup`` — the
two forms a YAML config (``kd-probe fit --config``) can write."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from kd_probe.callbacks._checks import check_mean_std

__all__ = [
    "DATAMODULE",
    "PROBE_FILE_KEYS",
    "ProbeFile",
    "ProbeSetReader",
    "open_probe_source",
    "read_pending_probe_sets",
]

DATAMODULE = "datamodule"  # ``images="datamodule"``: the probe split of the Trainer's data module, read at ``setup``
PROBE_FILE_KEYS = ("images", "labels", "masks", "mean", "std")


@dataclass(frozen=True)
class ProbeFile:
    """A probe set saved as a file: ``torch.save({"images": ..., "labels": ..., "masks": ..., "mean": ..., "std":
    ...}, path)``, every key but ``images`` optional (``mean``/``std``: the inputs' normalisation per channel, as a
    data module's; both or neither, checked as ``normalization=`` is). Read with :func:`open_probe_source`,
    ``torch.load(weights_only=True)`` only."""

    path: str
    images: Tensor
    labels: Tensor | None = None
    masks: Tensor | None = None
    mean: Any = None
    std: Any = None

    def parts(self, masks: Tensor | None, labels: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Images, masks and labels of the file; ``masks``/``labels`` given beside it are refused."""
        for name, given in (("masks", masks), ("labels", labels)):
            if given is not None:
                raise ValueError(
                    f"`{name}` must be None when `images` is a file ({self.path!r}): store them in the file "
                    f"under {name!r}."
                )
        return self.images, self.masks, self.labels


def open_probe_source(images: Any) -> Any:
    """``images`` as the probes read it: a path (``str`` or ``os.PathLike``) becomes the :class:`ProbeFile` it
    names; anything else is returned as given. ``"datamodule"`` is resolved by the probes at ``setup``."""
    if not isinstance(images, (str, os.PathLike)):
        return images
    shown = os.fspath(images)
    if shown == DATAMODULE:
        raise ValueError(
            "`images`='datamodule' names the probe split of the Trainer's data module, which a probe reads in "
            "`setup`; here a tensor, a dataset, a data module or a file path is expected."
        )
    if not Path(shown).is_file():
        raise ValueError(
            f"`images`={shown!r} is neither 'datamodule' (the Trainer's data module's probe split) nor an existing "
            f"file (a torch.save'd dict with {list(PROBE_FILE_KEYS)}, 'images' required; relative paths are read "
            f"from {os.getcwd()})."
        )
    try:
        record = torch.load(shown, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"`images`={shown!r} cannot be read with torch.load(weights_only=True): {reason}") from error
    if not isinstance(record, dict) or not isinstance(record.get("images"), Tensor):
        found = f"a dict with keys {sorted(record)}" if isinstance(record, dict) else f"a {type(record).__name__}"
        raise ValueError(
            f"`images`={shown!r} must hold a dict with an 'images' tensor (and optionally {list(PROBE_FILE_KEYS[1:])}), "
            f"got {found}."
        )
    unknown = sorted(set(record) - set(PROBE_FILE_KEYS))
    if unknown:
        raise ValueError(f"`images`={shown!r} holds unknown keys {unknown}; expected some of {list(PROBE_FILE_KEYS)}.")
    opened = ProbeFile(shown, **record)
    pictures = opened.images.dim() == 4 and opened.images.is_floating_point()  # else token ids or point clouds
    channels = opened.images.shape[1] if pictures else None
    check_mean_std(opened.mean, opened.std, channels, f"`images`={shown!r} (a probe-set file)")
    return opened


class ProbeSetReader:
    """How a probe takes its held-out set: now (tensors, a dataset, a data module, or the path of a
    :class:`ProbeFile`), or — for ``images="datamodule"``, the form a YAML config can write — in ``setup``, from
    the data module the Trainer was given. A probe calls :meth:`_take_probe_set` in ``__init__`` (after checking
    its plain arguments) and :func:`read_pending_probe_sets` first in ``setup``; both end in its own
    ``_read_probe_set(source, **arguments)``, which reads and checks the set and what depends on it."""

    _read_probe_set: Callable[..., None]
    _pending_probe_set: dict[str, Any] | None = None

    def _take_probe_set(self, images: Any, **arguments: Any) -> None:
        if isinstance(images, str) and images == DATAMODULE:
            for name in ("masks", "labels"):
                if arguments.get(name) is not None:
                    raise ValueError(
                        f"`{name}` must be None when `images`='datamodule': the data module's probe split brings "
                        f"its own {name}."
                    )
            self._pending_probe_set = arguments
            return
        self._read_probe_set(open_probe_source(images), **arguments)

    def _take_pending_probe_set(self, trainer: pl.Trainer) -> None:
        """Read the probe split of ``trainer.datamodule`` when ``images="datamodule"`` (once: later fits keep it).
        Call :func:`read_pending_probe_sets` in ``setup`` rather than this: it reads every probe's."""
        if self._pending_probe_set is None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "probe_set"):
            given = "no data module" if datamodule is None else f"a {type(datamodule).__name__} without a `probe_set`"
            raise ValueError(
                f"{type(self).__name__}: `images`='datamodule' reads the probe split (`probe_set`) of the Trainer's "
                f"data module, but the Trainer has {given}; pass `datamodule=` to `fit` or give the images."
            )
        arguments, self._pending_probe_set = self._pending_probe_set, None
        self._read_probe_set(datamodule, **arguments)


def read_pending_probe_sets(trainer: pl.Trainer) -> None:
    """Read the data module's probe split for every probe of ``trainer`` given ``images="datamodule"``, so that a
    callback's ``setup`` can use any probe's images and settings, whichever of them sets up first."""
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, ProbeSetReader):
            callback._take_pending_probe_set(trainer)
