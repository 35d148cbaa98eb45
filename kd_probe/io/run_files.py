"""The run folder's one room: the names of the files kd_probe writes into a run folder, their format versions and
size limits, and the bounded, type-checked reads of those files as data, never as code.

A file is read only when it is a regular file of at most the size a kd_probe file of its kind can have (a named
pipe, a device or a huge file is refused before anything is read); ``.pt`` files load with
``torch.load(..., weights_only=True)`` only; a path read from a file is followed only while it stays inside the
run's folder. Anything wrong raises a :class:`RunFileError` naming the file. :mod:`kd_probe.io.runs` reads whole
runs for ``kd-probe report``.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import torch

from kd_probe.io.paths import inside

__all__ = [
    "AGREEMENT_FILE",
    "EVENTS_LIMIT",
    "FORMAT_VERSION",
    "HISTORY_FILE",
    "JSON_LIMIT",
    "PT_LIMIT",
    "RUN_FILE",
    "SIMILARITY_FILE",
    "SUMMARY_FILE",
    "TENSORBOARD_FILE",
    "UNICAM_FILE",
    "RunFileError",
    "check_file",
    "check_version",
    "error_text",
    "exists",
    "member",
    "probe_file",
    "read_json",
    "read_pt",
]

# The files kd_probe writes into a run folder (the logger's directory, else the Trainer's root directory). This is
# the one place that names them: the probes, the demo and the report import the names from here.
RUN_FILE = "kd_probe_run.json"  # the demo's record of one run: role, seed, protocol, test accuracy
SUMMARY_FILE = "kd_probe_summary.json"  # KnowledgePointProbe: every final metric, the checkpoints, the settings
HISTORY_FILE = "kd_probe_history.pt"  # KnowledgePointProbe: every probe entry, with per-image values
UNICAM_FILE = "kd_probe_unicam.pt"  # UniCAMProbe: scores per layer pair, maps, distance matrices
SIMILARITY_FILE = "kd_probe_similarity.pt"  # SimilarityProbe: CKA matrices and class-correlation gaps per probe
AGREEMENT_FILE = "kd_probe_agreement.pt"  # AgreementProbe: every entry, with per-image values
TENSORBOARD_FILE = "kd_probe_tensorboard.json"  # marker: the Custom Scalars layout and HParams are written
JSON_LIMIT = 64 * 2**20  # bytes: a summary of 150 checkpoints is about 100 KB
PT_LIMIT = 4 * 2**30  # bytes: a history of 1,000 images × 150 checkpoints × 56×56 units is about 2 GB
EVENTS_LIMIT = 4 * 2**30  # bytes: one TensorBoard event file
# The format version written in the ``"version"`` field of the files that carry one.
FORMAT_VERSION = {HISTORY_FILE: 1, UNICAM_FILE: 1, AGREEMENT_FILE: 1, SIMILARITY_FILE: 1, TENSORBOARD_FILE: 1}


def probe_file(file: str, name: str | None) -> str:
    """The name of a probe's ``file`` for a probe called ``name``: ``kd_probe_history_<name>.pt`` for a named
    probe, ``file`` itself without a name (so two probes of one kind on one Trainer keep separate files).

    Example::

        >>> probe_file(HISTORY_FILE, "student")
        'kd_probe_history_student.pt'
        >>> probe_file(SUMMARY_FILE, None)
        'kd_probe_summary.json'
    """
    if not name:
        return file
    stem, extension = file.rsplit(".", 1)
    return f"{stem}_{name}.{extension}"


class RunFileError(ValueError):
    """A run's file is missing, damaged, hostile or malformed: the run is left out of the report.

    Args:
        path: the file (or folder) that is wrong.
        problem: what is wrong with it, as the end of a sentence that starts with the path.
    """

    def __init__(self, path: Path, problem: str) -> None:
        shown = str(path) if len(str(path)) <= 200 else f"{str(path)[:120]}...{str(path)[-60:]}"
        super().__init__(f"{shown} {problem}")
        self.path = path


def member(folder: Path, relative: object, source: str) -> Path:
    """``folder/relative`` when it stays inside the run folder (links resolved), else a ``RunFileError``."""
    target = inside(folder, relative)
    if target is None:
        shown = repr(relative) if len(repr(relative)) <= 80 else f"{repr(relative)[:77]}..."
        if isinstance(relative, str) and "\x00" in relative:
            raise RunFileError(folder / source, f"names {shown}, which is not a file name; refused.")
        named = "is a link" if relative == source else f"names the file {shown}"
        raise RunFileError(folder / source, f"{named} outside the run folder {folder}; refused.")
    return target


def exists(path: Path) -> bool:
    """Whether something is at ``path`` (a link loop or an unreadable name counts as there: reading it says why)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return True


def check_file(path: Path, limit: int) -> int:
    """The size of ``path`` when it is a regular file of at most ``limit`` bytes, else a ``RunFileError``: a named
    pipe or a device would hang or never end, a file larger than any kd_probe file of its kind would exhaust
    memory; both are refused before anything is read."""
    try:
        status = os.stat(path)
    except (OSError, ValueError) as error:
        raise RunFileError(path, f"cannot be opened ({error_text(error)}).") from None
    if not stat.S_ISREG(status.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(status.st_mode)
            else "a named pipe"
            if stat.S_ISFIFO(status.st_mode)
            else ("a device" if stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode) else "not a regular file")
        )
        raise RunFileError(path, f"is {kind}, not a regular file; refused, not read.")
    if status.st_size > limit:
        raise RunFileError(
            path, f"is {status.st_size} bytes, more than a kd_probe file of its kind can be ({limit}); not read."
        )
    return status.st_size


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (a regular file of at most ``JSON_LIMIT`` bytes, read with that bound), or a
    ``RunFileError`` saying why not. ``NaN`` is accepted (the probes write it for what no checkpoint gives),
    ``Infinity`` is not."""
    check_file(path, JSON_LIMIT)
    try:
        with open(path, "rb") as file:
            data = file.read(JSON_LIMIT + 1)
        if len(data) > JSON_LIMIT:
            raise RunFileError(path, f"grew past {JSON_LIMIT} bytes while being read; not read.")
        value = json.loads(data.decode("utf-8"), parse_constant=_json_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:  # JSONDecodeError: a ValueError
        raise RunFileError(path, f"is not readable JSON ({error_text(error)}).") from None
    if not isinstance(value, dict):
        raise RunFileError(path, f"holds a JSON {type(value).__name__}; expected an object.")
    return value


def _json_constant(name: str) -> float:
    if name == "NaN":
        return math.nan
    raise ValueError(f"{name} is not a value a kd_probe file holds")


def read_pt(path: Path) -> dict[str, Any]:
    """A dict of tensors and plain data from a ``.pt`` file: ``weights_only=True`` always, so a file that holds
    anything else (code a pickle would run) is refused, never loaded; a ``RunFileError`` saying why."""
    check_file(path, PT_LIMIT)
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged or hostile file can fail in any way; the run is left out
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found:
            raise RunFileError(
                path, f"holds {found[1]}, not only tensors and plain data; refused, not loaded."
            ) from None
        raise RunFileError(path, f"is damaged or not a torch file ({error_text(error)}).") from None
    if not isinstance(value, dict):
        raise RunFileError(path, f"holds a {type(value).__name__}; expected a dict.")
    return value


def error_text(error: BaseException) -> str:
    """The first line of an error message, short enough for one line of the report."""
    text = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_version(path: Path, record: dict[str, Any], file: str) -> None:
    """A ``RunFileError`` when ``record`` (read from ``path``, a ``file`` of a run folder) was written in another
    format version than the one this kd_probe writes (:data:`FORMAT_VERSION`); a record without one is read."""
    version = record.get("version")
    if version is not None and version != FORMAT_VERSION[file]:
        raise RunFileError(
            path, f"was written in format version {version!r:.40}; this kd_probe reads version {FORMAT_VERSION[file]}."
        )
