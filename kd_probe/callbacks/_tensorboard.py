"""What every kd_probe callback adds to a TensorBoard run folder: a *Custom Scalars* layout of the probe tags and
an *HParams* entry (the run's hyper-parameters, and as metrics the probes' live tags and the accuracy, whose last
values the HParams tab shows). The functions take the probes' contributions as arguments
(:class:`~kd_probe.callbacks._base.ProbeCallback` gathers them), so this module knows no callback class."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from kd_probe.core.layers import unwrap_compiled
from kd_probe.core.transforms import TRANSFORMS
from kd_probe.io.paths import write_atomically
from kd_probe.io.run_files import FORMAT_VERSION, TENSORBOARD_FILE
from kd_probe.io.tags import (
    AGREEMENT,
    KNOWLEDGE_POINTS,
    LEARNING_STABILITY,
    SIGMA,
    SIMILARITY,
    UNICAM,
    WEIGHTS,
)

__all__ = [
    "ACCURACY_TAGS",
    "MARKER_FILE",
    "hyperparameters",
    "probe_layout",
    "start_run",
    "tensorboard_loggers",
]

MARKER_FILE = TENSORBOARD_FILE  # in the run folder: the layout and HParams are written there already
ACCURACY_TAGS = ("val/acc", "test/acc")  # Lightning's: HParams metrics beside the probes' tags
_EPS = r"eps_[0-9.]+"  # the ε sweep of AgreementProbe: eps_<k>, k = ε·255


def _probe(group: str) -> str:
    """The start of a probe's tags in ``group``: ``group/`` or ``group/<name>/`` (a ``name``: one safe path
    component)."""
    return rf"^{group}/(?:[\w.-]+/)?"


def _chart(*patterns: str) -> list[Any]:
    return ["Multiline", [f"{pattern}$" for pattern in patterns]]


def probe_layout() -> dict[str, dict[str, list[Any]]]:
    """The *Custom Scalars* layout of every kd_probe scalar tag, for ``SummaryWriter.add_custom_scalars``:
    ``{category: {chart: ["Multiline", [tag regexes]]}}``, the categories in the order of the tags' numbered
    groups (:mod:`kd_probe.io.tags`).

    Each chart is one quantity; its regexes cover named probes (``group/<name>/...``) and every layer,
    module and ε, and TensorBoard draws every run of the log directory in it, so that the distilled and the
    baseline run (two run folders) are overlaid: the papers' figures.

    Example::

        SummaryWriter("runs/demo/distilled").add_custom_scalars(probe_layout())
    """
    knowledge, learning, agreement = _probe(KNOWLEDGE_POINTS), _probe(LEARNING_STABILITY), _probe(AGREEMENT)
    unicam, similarity, sigma = _probe(UNICAM), _probe(SIMILARITY), _probe(SIGMA)
    invariance = {
        f"invariance: {name}": _chart(f"{agreement}invariance/{name}/(?:student|teacher)") for name in TRANSFORMS
    }
    weights = rf"^{WEIGHTS}/[^/]+/"
    return {
        "knowledge points": {
            "N_fg: knowledge points on the foreground per image": _chart(f"{knowledge}n_fg"),
            "N_bg: knowledge points on the background per image": _chart(f"{knowledge}n_bg"),
            "fg_ratio: foreground share of the knowledge points": _chart(f"{knowledge}fg_ratio"),
            "background entropy H̄ (nats)": _chart(f"{knowledge}baseline_entropy"),
        },
        "learning speed and stability": {
            "D_mean: weight distance to the knowledge points": _chart(f"{learning}d_mean"),
            "D_std: spread of that distance": _chart(f"{learning}d_std"),
            "D: path length of the probed layer's weight": _chart(f"{learning}weight_distance"),
            "ρ: stability of the foreground knowledge points": _chart(f"{learning}rho"),
            "ρ_all: stability of all knowledge points": _chart(f"{learning}rho_all"),
        },
        "agreement": {
            "Grad-CAM cosine with the teacher": _chart(f"{agreement}cam_cosine"),
            "Grad-CAM win rate against the reference": _chart(f"{agreement}cam_win_rate"),
            "Grad-CAM energy on the object": _chart(f"{agreement}cam_energy_in_mask/(?:student|teacher)"),
            "adversarial transfer at each ε": _chart(f"{agreement}adv_transfer/{_EPS}"),
            "teacher fooling rate at each ε": _chart(f"{agreement}teacher_fooling_rate/{_EPS}"),
            **invariance,
        },
        "FSS/RS": {
            "FSS: feature similarity to the teacher": _chart(f"{unicam}fss/.+"),
            "FSS (V-statistic)": _chart(f"{unicam}fss_v/.+"),
            "RS teacher: relevance to the labels": _chart(f"{unicam}rs/teacher/.+"),
            "RS student: relevance to the labels": _chart(f"{unicam}rs/student/.+"),
            "RS reference: relevance to the labels": _chart(f"{unicam}rs/reference/.+"),
            "RS distilled: what the student holds beyond the teacher": _chart(f"{unicam}rs/distilled/.+"),
            "RS residual: what the teacher holds that the student lacks": _chart(f"{unicam}rs/residual/.+"),
        },
        "representation similarity": {
            "CKA with the teacher, per matched layer pair": _chart(f"{similarity}cka/.+"),
            "CKA with the teacher, mean over the pairs": _chart(f"{similarity}cka_mean"),
            "class-correlation gap |corr_T − corr_S|": _chart(f"{similarity}class_gap"),
        },
        "weight trajectory": {
            "step length": _chart(f"{weights}step_length"),
            "distance travelled": _chart(f"{weights}distance"),
            "update cosine": _chart(f"{weights}update_cosine"),
            "direction consistency": _chart(f"{weights}direction_consistency"),
            "final alignment": _chart(f"{weights}final_alignment"),
            "path efficiency": _chart(f"{weights}path_efficiency"),
        },
        "σ maps": {
            "images whose σ reached the target entropy": _chart(f"{sigma}reached_target_fraction"),
            "images whose feature responds to noise": _chart(f"{sigma}effective_fraction"),
        },
    }


def tensorboard_loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    r"""The Trainer's ``TensorBoardLogger``\ s."""
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def start_run(logger: TensorBoardLogger, params: dict[str, bool | int | float | str], metric_tags: list[str]) -> None:
    """The layout and the HParams declaration (``params``, and ``metric_tags`` as metric names: the HParams tab
    shows each tag's last value) into ``logger``'s run folder, unless its marker says they are there; the marker
    is written last, so a failed write is tried again by the next fit."""
    from torch.utils.tensorboard.summary import hparams

    marker = Path(logger.log_dir) / MARKER_FILE
    if marker.exists():
        return
    layout = probe_layout()
    writer = logger.experiment
    writer.add_custom_scalars(layout)
    for summary in hparams(params, dict.fromkeys(metric_tags, math.nan)):  # only the names: the tags hold the values
        writer._get_file_writer().add_summary(summary)
    writer.flush()
    record = {"version": FORMAT_VERSION[TENSORBOARD_FILE], "layout": layout, "hparams": params, "metrics": metric_tags}
    text = json.dumps(record, indent=2, ensure_ascii=False)
    write_atomically(marker, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def hyperparameters(
    trainer: pl.Trainer, pl_module: pl.LightningModule, probe_params: Mapping[str, Any] | None = None
) -> dict[str, bool | int | float | str]:
    """The *HParams* columns of a run: the LightningModule's and the data module's hyper-parameters (flattened
    with ``/``, as Lightning logs them), ``kd_probe/teacher`` (the class of the module's ``teacher``, ``none``
    without one) and the probes' own columns ``probe_params`` (a knowledge-point probe's ``<p>/layer`` and
    ``<p>/<setting>``)."""
    params: dict[str, Any] = {}
    if getattr(pl_module, "_log_hyperparams", True):
        params.update(pl_module.hparams_initial)
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and getattr(datamodule, "_log_hyperparams", True):
        params.update(datamodule.hparams_initial)
    params.pop("_class_path", None)  # LightningCLI's own
    teacher = getattr(pl_module, "teacher", None)
    params["kd_probe/teacher"] = type(unwrap_compiled(teacher)).__name__ if isinstance(teacher, nn.Module) else "none"
    params.update(probe_params or {})
    return dict(_flatten(params))


def _flatten(params: Mapping[str, Any], prefix: str = "") -> list[tuple[str, bool | int | float | str]]:
    items: list[tuple[str, bool | int | float | str]] = []
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            items += _flatten(value, f"{name}/")
        elif isinstance(value, (bool, int, float, str)):
            items.append((name, value))
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            items.append((name, value.item()))
        else:  # None, sequences, objects: shown as text, as Lightning does
            items.append((name, str(value)))
    return items
