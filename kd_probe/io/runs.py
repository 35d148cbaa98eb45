"""Reading a probed run back as data, never as code (used by ``kd-probe report``).

Every file goes through the bounded, type-checked reads of :mod:`kd_probe.io.run_files`; structures and values are
checked (a metric outside the values it can take, a run name that is not a plain word); event files are checked
record by record (:mod:`kd_probe.io.events`: TensorBoard's own reader silently stops at a damaged record), and
their tags read under the names of every kd_probe version (:mod:`kd_probe.io.tags`). Anything wrong raises a
:class:`~kd_probe.io.run_files.RunFileError` naming the file, and the report leaves that run out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kd_probe.core.knowledge_points import count_knowledge_points
from kd_probe.io.events import last_agreement, path_efficiency, read_scalars
from kd_probe.io.run_files import (
    AGREEMENT_FILE,
    HISTORY_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    UNICAM_FILE,
    RunFileError,
    check_version,
    error_text,
    exists,
    member,
    read_json,
    read_pt,
)

__all__ = ["AGREEMENT", "METRICS", "OPTIONAL_PROBES", "RANGES", "ROLES", "RunSummary", "find_runs", "load_run"]

ROLES = ("distilled", "baseline")
STEPS, CHECKPOINTS = "every optimizer step", "the saved checkpoints"  # what a run's D is summed over
METRICS = (
    ("accuracy", "accuracy"),
    ("n_fg", "N_fg"),
    ("n_bg", "N_bg"),
    ("fg_ratio", "fg_ratio"),
    ("d_mean", "D_mean"),
    ("d_std", "D_std"),
    ("rho", "ρ"),
    ("rho_all", "ρ_all"),
    ("path_efficiency", "path efficiency"),
)
RANGES = {  # the values each metric of a run can take (the accuracy is a fraction: 0.85 is 85 %)
    "accuracy": (0.0, 1.0),
    "n_fg": (0.0, 1e12),
    "n_bg": (0.0, 1e12),
    "fg_ratio": (0.0, 1.0),
    "d_mean": (0.0, 1e12),
    "d_std": (0.0, 1e12),
    "rho": (0.0, 1.0),
    "rho_all": (0.0, 1.0),
}
_PLAIN = re.compile(r"[A-Za-z0-9_.\-]{1,100}")  # a run's name and protocol: plain words, never markup
OPTIONAL_PROBES = ("agreement `", "UniCAM `")  # comparison keys of probes a run may not have had

AGREEMENT = (  # [WK]'s agreement with the teacher, last AgreementProbe values (tag leaf, column; io.events)
    ("cam_cosine", "CAM cosine"),
    ("cam_energy_in_mask/student", "CAM energy on object"),
    ("adv_transfer", "adversarial transfer"),
    ("invariance/color/student", "colour invariance"),
    ("invariance/crop/student", "crop invariance"),
    ("invariance/shift/student", "shift invariance"),
)


@dataclass
class RunSummary:
    """One probed run: its role (distilled / baseline), seed, test accuracy and final metrics."""

    path: Path
    name: str
    role: str
    seed: int
    metrics: dict[str, float]
    summary: dict[str, Any] = field(repr=False)
    _history: dict[str, Any] | None = field(default=None, repr=False)
    _unicam: dict[str, Any] | None = field(default=None, repr=False)
    protocol: str | None = None
    agreement: dict[str, Any] | None = field(default=None, repr=False)
    method: str | None = None  # a distilled run's KD method (``kd_method`` of its kd_probe_run.json)
    weight_path: str = STEPS  # what D is summed over (``weight_path`` of its kd_probe_run.json; methods §1.4)
    num_classes: int | None = None  # the classes of its task (``num_classes`` of its kd_probe_run.json), if recorded

    @property
    def group(self) -> str:
        """What the report compares the run as: ``"baseline"``, or a distilled run's KD method (``"distilled"``
        when its files do not name one)."""
        return self.role if self.role == "baseline" else self.method or self.role

    @property
    def finished(self) -> bool:
        """Whether the run's training ended (its summary says ``"finished": false`` while training goes on, and a
        run killed mid-training keeps that summary, up to its last completed probe)."""
        return self.summary.get("finished", True) is not False

    @property
    def sigma_method(self) -> str:
        """The σ engine of the run's knowledge-point probe (``"faithful"`` when not recorded, as before it was)."""
        settings = self.summary.get("settings")
        method = settings.get("method", "faithful") if isinstance(settings, dict) else "faithful"
        return method if isinstance(method, str) else "faithful"

    @property
    def last_epoch(self) -> str:
        """The epoch of the run's last completed knowledge-point probe, as its summary records it."""
        checkpoints = self.summary.get("checkpoints")
        listed = checkpoints if isinstance(checkpoints, list) else []
        done = [c.get("epoch") for c in listed if isinstance(c, dict) and not c.get("failed")]
        return str(done[-1]) if done and isinstance(done[-1], int) else "none"

    @property
    def comparison_keys(self) -> dict[str, str]:
        """What runs must share to be compared image by image: the protocol, the σ method, the probe set (the
        fingerprint of its tensors), the probed layer and every other knowledge-point setting (threshold,
        baseline, samples, unit type, ...), and the agreement and UniCAM probes' probe sets, layers and settings
        when the run has their files (a probe the run did not have has no keys: :data:`OPTIONAL_PROBES`);
        ``"not recorded"`` where the run's files do not say."""
        settings = self.summary.get("settings")
        keys: dict[str, Any] = {
            "protocols": self.protocol,
            "σ methods": self.sigma_method,
            "probe sets": self.summary.get("probe_set"),
            "probed layers": self.summary.get("layer"),
        }
        if isinstance(settings, dict):
            # `seed` is the σ noise's draw, which the demo varies with the training seed, as seed pairs may
            keys.update({f"knowledge-point `{k}`": v for k, v in settings.items() if k not in ("method", "seed")})
        for probe, record in (("agreement", self.agreement), ("UniCAM", self.unicam)):
            recorded = record.get("settings", {"settings": None}) if record else {}
            if isinstance(recorded, dict):  # the networks' names differ by role (a baseline's teacher is a module)
                keys.update({f"{probe} `{k}`": v for k, v in recorded.items() if k not in ("networks", "seed")})
        return {what: "not recorded" if value is None else str(value) for what, value in keys.items()}

    @property
    def unicam(self) -> dict[str, Any] | None:
        """The UniCAMProbe's file (scores and maps per probe), when the run had one (read once)."""
        if self._unicam is None:
            self._unicam = _read_unicam(self.path)
        return self._unicam

    @property
    def history(self) -> dict[str, Any]:
        """The KnowledgePointProbe's history file named by the summary (read once)."""
        if self._history is None:
            self._history = _read_history(self.path, self.summary)
        return self._history


def find_runs(paths: Sequence[Path], *, not_runs: list[Path] | None = None) -> list[Path]:
    """Run folders among ``paths``: each path itself when it holds a summary, else its sub-folders that do.

    Hidden folders, virtual environments and ``site-packages`` are never searched. A folder whose
    ``kd_probe_summary.json`` is not a summary written by kd_probe (a JSON object with ``settings`` or
    ``history_file``), and that holds no other file of a probed run, is not a run: it is appended to
    ``not_runs`` and never read as one (a damaged summary next to a run's other files stays a run, so that the
    report names the damage).

    Raises:
        FileNotFoundError: a path that is not a folder, or no run among ``paths``.
    """
    runs: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"no such folder: {path}")
        if (path / SUMMARY_FILE).exists():
            found = [path]
        else:
            found = sorted(p.parent for p in path.glob(f"*/{SUMMARY_FILE}") if not _never_a_run(p.parent))
        for folder in found:
            if _is_run(folder):
                runs.append(folder)
            elif not_runs is not None:
                not_runs.append(folder)
    if not runs:
        raise FileNotFoundError(
            f"no run with a {SUMMARY_FILE} in {', '.join(str(p) for p in paths)}; run a "
            "KnowledgePointProbe (or `kd-probe demo`) first."
        )
    return runs


def _never_a_run(folder: Path) -> bool:
    """A hidden folder, a virtual environment or an installed package tree: not searched for runs."""
    return (
        folder.name.startswith(".")
        or folder.name in ("site-packages", "__pycache__")
        or (folder / "pyvenv.cfg").exists()
    )


def _is_run(folder: Path) -> bool:
    """Whether ``folder`` is a probed run: its summary is one kd_probe writes, or it holds a run's other files."""
    try:
        summary: Any = read_json(folder / SUMMARY_FILE)
    except RunFileError:
        summary = None
    if isinstance(summary, dict) and ("settings" in summary or "history_file" in summary):
        return True
    others = (RUN_FILE, HISTORY_FILE.replace(".pt", "*.pt"), "events.out.tfevents.*")  # named probes too
    return any(next(folder.glob(pattern), None) is not None for pattern in others)


def load_run(path: Path) -> RunSummary:
    """A run's summary, role and seed (from ``kd_probe_run.json``, else from the folder name), accuracy and
    probe files, every file checked; a ``RunFileError`` naming the file when one is missing or wrong."""
    path = Path(path)
    summary = read_json(member(path, SUMMARY_FILE, SUMMARY_FILE))
    run_file = member(path, RUN_FILE, RUN_FILE)
    info = read_json(run_file) if exists(run_file) else {}
    role = info.get("role") or ("distilled" if "distil" in path.name else "baseline")
    if role not in ROLES:
        raise RunFileError(run_file, f"gives the role {role!r}; expected one of {', '.join(ROLES)}.")
    seed, name, protocol = info.get("seed", 0), info.get("run", path.name), info.get("protocol")
    method = info.get("kd_method") if role == "distilled" else None
    weight_path = info.get("weight_path", STEPS)
    if weight_path not in (STEPS, CHECKPOINTS):
        raise RunFileError(run_file, f"gives the weight_path {weight_path!r}; expected {STEPS!r} or {CHECKPOINTS!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RunFileError(run_file, f"gives the seed {seed!r}; expected an integer.")
    if (classes := info.get("num_classes")) is not None and (type(classes) is not int or classes < 1):
        raise RunFileError(run_file, f"gives the num_classes {classes!r:.80}; expected a positive integer.")
    if not isinstance(name, str) or not isinstance(protocol, (str, type(None))):
        raise RunFileError(run_file, f"gives the run {name!r} and protocol {protocol!r}; expected text.")
    if not isinstance(method, (str, type(None))):
        raise RunFileError(run_file, f"gives the kd_method {method!r}; expected text.")
    for what, text in (("run", name), ("protocol", protocol), ("kd_method", method or None)):
        if text is not None and not _PLAIN.fullmatch(text):
            shown = repr(text) if len(repr(text)) <= 80 else f"{repr(text)[:77]}..."
            raise RunFileError(run_file, f"gives the {what} {shown}; expected 1–100 letters, digits, '_', '-' or '.'.")
    own, head = read_scalars(path), read_scalars(path / "head")  # each event folder read once
    accuracy = info.get("test_accuracy")
    if accuracy is None:
        accuracy = next((series[-1] for series in (own.get("test/acc"), head.get("test/acc")) if series), None)
    metrics = {key: _metric(path / SUMMARY_FILE, summary, key) for key in RANGES if key != "accuracy"}
    metrics["accuracy"] = _metric(run_file if "test_accuracy" in info else path, {"accuracy": accuracy}, "accuracy")
    metrics["path_efficiency"] = path_efficiency(own)
    scalars = {**head, **own}
    for suffix, _ in AGREEMENT:
        metrics[f"agreement/{suffix}"] = last_agreement(scalars, suffix)
    history, unicam, agreement = _read_history(path, summary), _read_unicam(path), _read_agreement(path)
    return RunSummary(
        path,
        name,
        role,
        seed,
        metrics,
        summary,
        _history=history,
        _unicam=unicam,
        protocol=protocol,
        agreement=agreement,
        method=method or None,
        weight_path=weight_path,
        num_classes=classes,
    )


def _require(path: Path, record: dict[str, Any], types: dict[str, type | tuple[type, ...]]) -> None:
    for key, kind in types.items():
        if not isinstance(record.get(key), kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            expected = " or ".join(k.__name__ for k in kinds)
            raise RunFileError(path, f"has {key!r} of type {type(record.get(key)).__name__}; expected {expected}.")


def _read_history(folder: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The history file the summary names, checked: every probed entry fits the saved masks."""
    path = member(folder, summary.get("history_file", HISTORY_FILE), SUMMARY_FILE)
    if not exists(path):
        raise RunFileError(path, f"is missing (named by {SUMMARY_FILE}).")
    history = read_pt(path)
    check_version(path, history, HISTORY_FILE)
    _require(path, history, {"entries": list, "masks": torch.Tensor, "settings": dict, "images": torch.Tensor})
    tensors = ("entropy", "points", "n_fg", "effective")
    for entry in history["entries"]:
        if not isinstance(entry, dict):
            raise RunFileError(path, f"has an entry of type {type(entry).__name__}; expected a dict.")
        if entry.get("failed") is None and "entropy" in entry:
            _require(path, entry, {**dict.fromkeys(tensors, torch.Tensor), "epoch": int, "fg_ratio": (int, float)})
            try:  # what the sweep and the figures will do with it
                count_knowledge_points(
                    entry["entropy"],
                    history["masks"],
                    baseline=history["settings"].get("baseline", "dataset"),
                    effective=entry["effective"],
                )
            except Exception as error:  # any malformed tensor; the run is left out
                raise RunFileError(path, f"has an entry that does not fit its masks ({error_text(error)}).") from None
    return history


def _probe_file(folder: Path, file: str) -> tuple[Path, dict[str, Any]] | None:
    """A probe's ``.pt`` file of the run (its path and record, read weights-only, of this format version), or
    ``None`` when the run has none."""
    path = member(folder, file, file)
    if not exists(path):
        return None
    record = read_pt(path)
    check_version(path, record, file)
    return path, record


def _read_unicam(folder: Path) -> dict[str, Any] | None:
    """The UniCAMProbe's file, checked, or ``None`` when the run has none."""
    found = _probe_file(folder, UNICAM_FILE)
    if found is None:
        return None
    path, record = found
    _require(path, record, {"entries": list, "layers": (list, tuple), "maps": list, "images": torch.Tensor})
    if not all(isinstance(pair, (list, tuple)) and pair and isinstance(pair[0], str) for pair in record["layers"]):
        raise RunFileError(path, "has 'layers' that are not pairs of layer names.")
    for entry in record["entries"]:
        scores = isinstance(entry, dict) and all(
            isinstance(value, (int, float)) for key, value in entry.items() if "/" in key
        )
        if not scores:
            raise RunFileError(path, "has an entry whose scores are not numbers.")
    for maps in record["maps"]:
        if not isinstance(maps, dict) or not all(
            isinstance(maps.get(k), torch.Tensor) for k in ("distilled", "residual")
        ):
            raise RunFileError(path, "has maps that are not tensors.")
    _check_distances(path, record.get("distances"))
    return record


def _check_distances(path: Path, saved: Any) -> None:
    """The UniCAMProbe's distance matrices of its latest probe: square float matrices of one size."""
    if saved is None:
        return
    layers = saved.get("layers") if isinstance(saved, dict) else None
    labels = saved.get("labels") if isinstance(saved, dict) else None
    if not (isinstance(layers, dict) and all(isinstance(m, dict) for m in layers.values())):
        raise RunFileError(path, "has 'distances' without per-layer matrices.")
    if not (isinstance(labels, torch.Tensor) and isinstance(saved.get("epoch"), int)):
        raise RunFileError(path, "has 'distances' without a label distance matrix or an epoch.")
    size = tuple(labels.shape)
    matrices = [labels, *(m for group in layers.values() for m in group.values())]
    if (
        len(size) != 2
        or size[0] != size[1]
        or not all(isinstance(m, torch.Tensor) and m.is_floating_point() and tuple(m.shape) == size for m in matrices)
    ):
        raise RunFileError(path, f"has 'distances' that are not square float matrices of one size {size}.")


def _read_agreement(folder: Path) -> dict[str, Any] | None:
    """The AgreementProbe's file (per-image scores per probe), checked, or ``None`` when the run has none."""
    found = _probe_file(folder, AGREEMENT_FILE)
    if found is None:
        return None
    path, record = found
    _require(path, record, {"entries": list, "eps_keys": list, "labels": torch.Tensor})
    count = record["labels"].numel()
    for entry in record["entries"]:
        if not isinstance(entry, dict):
            raise RunFileError(path, f"has an entry of type {type(entry).__name__}; expected a dict.")
        values = entry.get("per_image")
        if entry.get("failed") is not None or values is None:
            continue
        needed = [f"{kind}/{eps}" for eps in record["eps_keys"] for kind in ("teacher_fooled", "student_fooled")]
        if not isinstance(values, dict) or not all(
            isinstance(values.get(key), torch.Tensor) and values[key].shape == (count,) for key in needed
        ):
            raise RunFileError(path, f"has per-image values that are not one per probe image ({count}) for {needed}.")
        if not all(isinstance(v, torch.Tensor) and v.shape == (count,) for v in values.values()):
            raise RunFileError(path, f"has per-image values that are not tensors of shape ({count},).")
    return record


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _metric(path: Path, record: dict[str, Any], key: str) -> float:
    """``record[key]`` as a float (NaN when absent or NaN), or a ``RunFileError`` when it is not a number or lies
    outside the values the metric can take (an accuracy of 42 is 4200 %)."""
    value = record.get(key)
    if value is None:
        return math.nan
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RunFileError(path, f"gives {key} = {value!r:.80}; expected a number.")
    low, high = RANGES[key]
    if not math.isnan(value) and not low <= value <= high:
        raise RunFileError(path, f"gives {key} = {value!r}; expected a number in [{low}, {high}].")
    return float(value)
