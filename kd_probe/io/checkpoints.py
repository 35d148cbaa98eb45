"""A series of checkpoints to probe: files from a glob, a folder or a list, each with the number of epochs of
training behind its weights (read from the file, from its name, or given)."""

from __future__ import annotations

import glob
import itertools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kd_probe.models import read_state

__all__ = ["CHECKPOINT_SUFFIXES", "Checkpoint", "checkpoint_series", "epoch_from_name"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
"""The files of a folder that :func:`checkpoint_series` takes."""

_MARKED = re.compile(r"(?<![a-z0-9])(?:epoch|ep|e)[=_-]?(\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a series.

    Attributes:
        epoch: the epochs of training behind the weights (0: before training).
        path: the file.

    Example::

        >>> Checkpoint(epoch=3, path=Path("checkpoints/epoch_3.pt")).epoch
        3
    """

    epoch: int
    path: Path


def checkpoint_series(
    checkpoints: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    epochs: Sequence[int] | None = None,
    argument: str = "checkpoints",
    key: str | None = None,
) -> list[Checkpoint]:
    """The checkpoints named by ``checkpoints``, each with its epoch, sorted by epoch.

    ``checkpoints`` is a glob pattern (read from the current folder; ``**`` spans folders), a folder (every
    ``*.pt``, ``*.pth``, ``*.ckpt`` and ``*.bin`` directly inside), or a list of files. The epoch of each file is,
    in this order:

    1. ``epochs``, one per file: in the files' order for a list, in name order for a glob or a folder (numbers in
       names compared as numbers, so ``ep2`` comes before ``ep10``);
    2. the file's own: ``trained_epochs`` of :func:`kd_probe.models.read_state` (a Lightning checkpoint's epoch
       index plus one, another dict's ``epoch`` as it is);
    3. its name (:func:`epoch_from_name`).

    Args:
        checkpoints: a glob pattern, a folder, or a list of files.
        epochs: the epochs of training behind each file's weights, when neither the files nor their names say.
        argument: the name of the setting that gave ``checkpoints``, for the error messages.
        key: the entry of each file's dict that holds the state_dict (``None``: found automatically), checked when
            the epoch is read from the file.

    Returns:
        The checkpoints, sorted by epoch.

    Raises:
        FileNotFoundError: nothing matched, or a listed file does not exist.
        ValueError: an epoch that cannot be read, is negative or is shared by two files; ``epochs`` of another
            length than the files; a file that :func:`kd_probe.models.read_state` refuses.

    Example::

        series = checkpoint_series("lightning_logs/version_0/checkpoints/*.ckpt")  # epochs from the files
        series = checkpoint_series("my_loop/", epochs=[0, 5, 10])  # three files in name order
        [(c.epoch, c.path.name) for c in series]  # [(0, 'init.pt'), (5, 'step_500.pt'), (10, 'step_1000.pt')]
    """
    paths = _paths(checkpoints, argument)
    if epochs is None:
        found = [(_epoch(path, argument, key), path) for path in paths]
    else:
        found = list(zip(_given_epochs(epochs, paths, argument), paths, strict=True))
    series = [Checkpoint(epoch=epoch, path=path) for epoch, path in sorted(found, key=lambda pair: pair[0])]
    for before, after in itertools.pairwise(series):
        if before.epoch == after.epoch:
            source = "by `epochs`" if epochs is not None else "by their contents or names"
            advice = (
                "give each file its own epoch" if epochs is not None else "keep one file per epoch, or give `epochs`"
            )
            raise ValueError(
                f"`{argument}`: {os.fspath(before.path)!r} and {os.fspath(after.path)!r} are both at epoch "
                f"{before.epoch} {source}; {advice}."
            )
    return series


def epoch_from_name(path: str | os.PathLike[str]) -> int | None:
    """The epoch in a checkpoint's file name: the last number after ``epoch``, ``ep`` or ``e`` (case-insensitive,
    optionally followed by ``=``, ``_`` or ``-``, and not inside a word or a number), else the last number of the
    name without its suffix, else ``None``.

    Example::

        >>> [epoch_from_name(name) for name in ("checkpoint-12.pt", "student_e05.pth", "seed3_epoch=4-step=9.ckpt")]
        [12, 5, 4]
        >>> epoch_from_name("final.pt") is None
        True
    """
    stem = Path(path).stem
    marked = _MARKED.findall(stem)
    numbers = marked or _NUMBER.findall(stem)
    return int(numbers[-1]) if numbers else None


def _paths(checkpoints: object, argument: str) -> list[Path]:
    """The files of a glob pattern or a folder in name order, or of a list in its order."""
    if isinstance(checkpoints, (str, os.PathLike)):
        pattern = os.fspath(checkpoints)
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"`{argument}` must be a glob pattern, a folder or a list of files, got {checkpoints!r}.")
        folder = Path(pattern)
        if folder.is_dir():
            paths = [path for path in folder.iterdir() if path.suffix in CHECKPOINT_SUFFIXES and path.is_file()]
            if not paths:
                raise FileNotFoundError(
                    f"`{argument}`={pattern!r} is a folder without a *.pt, *.pth, *.ckpt or *.bin file directly "
                    f"inside (relative paths are read from {os.getcwd()}); give a glob such as "
                    f"{os.path.join(pattern, '**', '*.pt')!r} for files further down."
                )
        else:
            paths = [Path(name) for name in glob.glob(pattern, recursive=True) if Path(name).is_file()]
            if not paths:
                raise FileNotFoundError(
                    f"`{argument}`={pattern!r} matched no checkpoint file (the pattern is read from {os.getcwd()}); "
                    "give a glob such as 'checkpoints/*.ckpt', a folder, or a list of files."
                )
        return sorted(paths, key=_name_order)
    if not isinstance(checkpoints, Sequence) or isinstance(checkpoints, bytes):
        raise ValueError(f"`{argument}` must be a glob pattern, a folder or a list of files, got {checkpoints!r}.")
    if not checkpoints:
        raise FileNotFoundError(f"`{argument}` is an empty list; give at least one checkpoint file.")
    paths = []
    for index, name in enumerate(checkpoints):
        if not isinstance(name, (str, os.PathLike)) or not Path(name).is_file():
            shown = os.fspath(name) if isinstance(name, (str, os.PathLike)) else name
            raise FileNotFoundError(
                f"`{argument}[{index}]`: there is no checkpoint file at {shown!r} (relative paths are read from "
                f"{os.getcwd()})."
            )
        paths.append(Path(name))
    return paths


def _name_order(path: Path) -> tuple[tuple[int, int | str], ...]:
    """A sort key that compares the numbers in a path as numbers (``ep2`` before ``ep10``)."""
    parts = re.split(r"(\d+)", os.fspath(path))
    return tuple((1, int(part)) if part.isdigit() else (0, part) for part in parts)


def _epoch(path: Path, argument: str, key: str | None) -> int:
    """The epoch of a file: its own, else its name's; one sentence when neither says or it is negative."""
    epoch = read_state(path, argument=argument, key=key)[1].get("trained_epochs")
    if not isinstance(epoch, int):
        epoch = epoch_from_name(path)
    if epoch is None:
        raise ValueError(
            f"`{argument}`: the epoch of {os.fspath(path)!r} cannot be read (the file has no integer 'epoch' and "
            "its name no number); give `epochs` with one number per file."
        )
    if epoch < 0:
        raise ValueError(
            f"`{argument}`: {os.fspath(path)!r} is at epoch {epoch}, but an epoch is the number of epochs trained, "
            "0 or more; give `epochs` with one number per file."
        )
    return epoch


def _given_epochs(epochs: object, paths: list[Path], argument: str) -> list[int]:
    """``epochs`` checked: whole numbers, 0 or more, one per file."""
    if (
        not isinstance(epochs, Sequence)
        or isinstance(epochs, str)
        or not all(isinstance(epoch, int) and not isinstance(epoch, bool) for epoch in epochs)
    ):
        raise ValueError(f"`epochs` must be a list of whole numbers of epochs trained, got {epochs!r}.")
    if len(epochs) != len(paths):
        names = [os.fspath(path) for path in paths]
        raise ValueError(
            f"`epochs` has {len(epochs)} number(s) but `{argument}` gives {len(paths)} file(s) "
            f"{names[:4]}{' ...' if len(names) > 4 else ''}; give one epoch per file, in the files' order."
        )
    negative = [epoch for epoch in epochs if epoch < 0]
    if negative:
        raise ValueError(
            f"`epochs`={list(epochs)} holds {negative[0]}, but an epoch is the number of epochs trained, 0 or more."
        )
    return list(epochs)
