"""The files a ``KnowledgePointProbe`` writes in the run folder: its history (``kd_probe_history[_<name>].pt``) and
its summary (``kd_probe_summary[_<name>].json``), each written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from kd_probe.callbacks._common import probe_normalization, run_folder, save_atomically
from kd_probe.callbacks._dynamics import PathLength, write_summary
from kd_probe.io.run_files import FORMAT_VERSION, HISTORY_FILE, SUMMARY_FILE, probe_file

__all__ = ["KnowledgePointFiles", "display_normalization"]


def display_normalization(source: Any, channels: int) -> dict[str, list[float]]:
    """``{"mean": [...], "std": [...]}`` of image probe inputs whose source (a data module, a dataset, a probe file)
    says how they were normalised — the report's figures undo it to show the inputs in colour —, else ``{}`` (a
    source without them, or with values that are not per-channel statistics)."""
    if any(getattr(source, key, None) is None or callable(getattr(source, key)) for key in ("mean", "std")):
        return {}
    try:
        mean, std = probe_normalization(source, None, channels)
    except ValueError:
        return {}
    return {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}


class KnowledgePointFiles:
    """The history and summary files of a knowledge-point probe (a mixin of ``KnowledgePointProbe``)."""

    layer: str
    module_path: str | None
    name: str | None
    log_images: int
    fingerprint: str | None
    history: list[dict[str, Any]]
    path: PathLength
    images: Any
    masks: Any
    foreground: Any
    normalization: dict[str, list[float]]  # the probe images' mean and std, when their source says (for display)

    @property
    def settings(self) -> dict[str, Any]:
        """The probe's recorded settings (the probe's own property)."""
        raise NotImplementedError

    def _write_summary(self, trainer: pl.Trainer, finished: bool = True) -> None:
        extra = {
            "finished": finished,  # False while training: the run up to its last completed probe
            "layer": self.layer,
            "weight_layer": self.path.module_name,
            "module": self.module_path,
            "name": self.name,
            "images": int(self.images.shape[0]),
            "settings": self.settings,
            "history_file": self.history_path(trainer).name,
            "probe_set": self.fingerprint,
        }
        path = run_folder(trainer) / probe_file(SUMMARY_FILE, self.name)
        write_summary(path, self.history, self.foreground, extra)

    def history_path(self, trainer: pl.Trainer) -> Path:
        """Where the history file goes: the first logger's directory, else the Trainer's root directory."""
        return run_folder(trainer) / probe_file(HISTORY_FILE, self.name)

    def _save_history(self, trainer: pl.Trainer) -> None:
        record = {
            "version": FORMAT_VERSION[HISTORY_FILE],
            "probe_set": self.fingerprint,
            "layer": self.layer,
            "module": self.module_path,
            "name": self.name,
            "settings": self.settings,
            "foreground": self.foreground,
            "masks": self.masks,
            "images": self.images[: max(self.log_images, 8)],
            **self.normalization,
            "entries": self.history,
        }
        save_atomically(record, self.history_path(trainer))
