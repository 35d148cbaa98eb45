"""Names that become file or folder names, and paths read from files: both kept inside the run folder."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

__all__ = ["check_name", "inside", "write_atomically"]

_SAFE = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def check_name(value: object, argument: str = "name") -> str:
    """``value`` if it is one safe path component (letters, digits, ``_``, ``-``, ``.``; not ``.`` or ``..``;
    at most 100 characters), else a ``ValueError`` naming ``argument`` and the value.

    Example::

        >>> check_name("student-1")
        'student-1'
    """
    if not isinstance(value, str) or not _SAFE.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"`{argument}` must be one safe path component (1–100 letters, digits, '_', '-' or '.', not '.' "
            f"or '..'), got {value!r}."
        )
    return value


def inside(folder: Path, relative: object) -> Path | None:
    """``folder / relative`` when ``relative`` is a plain relative path that stays inside ``folder`` (after
    resolving ``..`` and links), else ``None`` — for paths read from files, which are never followed out; a NUL
    byte, a link loop or a name the file system refuses is ``None`` too, never an exception.

    Example::

        >>> inside(Path("runs/a"), "../b") is None, inside(Path("runs/a"), "a" + chr(0) + "b") is None
        (True, True)
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative or Path(relative).is_absolute():
        return None
    try:
        root = Path(folder).resolve()
        target = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a name too long for the file system
        return None
    return target if target == root or root in target.parents else None


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` a temporary file next to ``path``, then ``os.replace`` it onto ``path``: a reader sees the old
    file or the new one, never half of one; on failure the temporary file is removed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
