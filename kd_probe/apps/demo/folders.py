"""The demo's own files in ``OUT/EXPERIMENT``: which folders and files an earlier demo wrote there, refused or
(with ``--overwrite``) removed before anything trains, and only those."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from kd_probe.io.run_files import RUN_FILE

__all__ = ["REPORT_FILES", "RUN_FOLDER", "clear_experiment"]

RUN_FOLDER = re.compile(r"teacher|(distilled(-[a-z_]+)?|baseline)(-s\d+)?")  # the run folders the demo writes
REPORT_FILES = ("report.md", "curves.png", "maps.png", "unicam.png", "similarity.png", "methods.png")


def _earlier_demo(folder: Path) -> list[Path]:
    """What an earlier demo wrote into ``folder``: its run folders, report and figures."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if RUN_FOLDER.fullmatch(path.name) or (path.name in REPORT_FILES and not path.is_dir())
    )


def clear_experiment(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that holds an earlier demo's runs, or with ``overwrite`` remove them (and only them).

    Raises:
        FileExistsError: the folder holds an earlier demo and ``overwrite`` is off, or a run folder's name is
            taken by something that is not a demo run (a link, a file, a folder without event files or
            ``kd_probe_run.json``), which ``overwrite`` leaves alone.
    """
    found = _earlier_demo(folder)
    if not found:
        return
    if not overwrite:
        raise FileExistsError(
            f"{folder} already holds an earlier demo ({', '.join(p.name for p in found)}); choose another "
            "folder with --experiment NAME, or pass --overwrite to remove those runs first."
        )
    for path in found:
        run = path.name not in REPORT_FILES
        demo_run = (
            not path.is_symlink()
            and path.is_dir()
            and ((path / RUN_FILE).is_file() or any(path.glob("events.out.tfevents.*")))
        )
        if run and not demo_run:
            raise FileExistsError(
                f"{path} is not a demo run (a link, a file, or a folder without TensorBoard event files or "
                f"{RUN_FILE}), so --overwrite leaves it alone; move it away or choose another --experiment NAME."
            )
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
