"""What every kd_probe callback adds to a TensorBoard run folder: a *Custom Scalars* layout of the probe tags and
an *HParams* entry (the run's hyper-parameters, the final knowledge-point metrics and the accuracy)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from kd_probe._paths import write_atomically
from kd_probe.callbacks._dynamics import final_metrics
from kd_probe.callbacks._guard import failure_reason
from kd_probe.callbacks._probe_sources import read_pending_probe_sets
from kd_probe.core.layers import unwrap_compiled
from kd_probe.core.transforms import TRANSFORMS

if TYPE_CHECKING:
    from kd_probe.callbacks.knowledge_points import KnowledgePointProbe

__all__ = [
    "ACCURACY_TAG",
    "HPARAMS_METRICS",
    "MARKER_FILE",
    "ProbeCallback",
    "hparams_metric_tags",
    "hyperparameters",
    "probe_layout",
]

MARKER_FILE = "kd_probe_tensorboard.json"  # in the run folder: the layout and HParams are written there already
HPARAMS_METRICS = ("n_fg", "fg_ratio", "d_mean", "d_std", "rho")  # per knowledge-point probe: <p>/hparams/<key>
ACCURACY_TAG = "kd_probe/hparams/accuracy"
_ACCURACY = {"fit": "val/acc", "test": "test/acc"}  # what the accuracy column reads at the end of fit / of a test
_PROBE = r"^kd_probe/(?:[\w.-]+/)?"  # kd_probe/ or kd_probe/<name>/ (a probe's `name`: one safe path component)
_EPS = r"(?:/eps_[0-9.]+)"  # the ε sweep of AgreementProbe: eps_<k>, k = ε·255


def _chart(*patterns: str) -> list[Any]:
    return ["Multiline", [f"{pattern}$" for pattern in patterns]]


def probe_layout() -> dict[str, dict[str, list[Any]]]:
    """The *Custom Scalars* layout of every kd_probe scalar tag (but ``<p>/hparams/...``), for
    ``SummaryWriter.add_custom_scalars``: ``{category: {chart: ["Multiline", [tag regexes]]}}``.

    Each chart is one quantity; its regexes cover named probes (``kd_probe/<name>/...``) and every layer,
    module and ε, and TensorBoard draws every run of the log directory in it, so that the distilled and the
    baseline run (two run folders) are overlaid: the papers' figures.

    Example::

        SummaryWriter("runs/demo/distilled").add_custom_scalars(probe_layout())
    """
    knowledge = f"{_PROBE}knowledge_points/"
    agreement = f"{_PROBE}agreement/"
    invariance = {
        f"invariance: {name}": _chart(f"{agreement}invariance/{name}/(?:student|teacher)") for name in TRANSFORMS
    }
    weights = r"^kd_probe/weights/[^/]+/"
    return {
        "knowledge points": {
            "N_fg: knowledge points on the foreground per image": _chart(f"{knowledge}n_fg"),
            "N_bg: knowledge points on the background per image": _chart(f"{knowledge}n_bg"),
            "fg_ratio: foreground share of the knowledge points": _chart(f"{knowledge}fg_ratio"),
            "background entropy H̄ (nats)": _chart(f"{knowledge}baseline_entropy"),
        },
        "learning speed and stability": {
            "D_mean: weight distance to the knowledge points": _chart(f"{_PROBE}learning/d_mean"),
            "D_std: spread of that distance": _chart(f"{_PROBE}learning/d_std"),
            "D: path length of the probed layer's weight": _chart(f"{_PROBE}learning/weight_distance"),
            "ρ: stability of the foreground knowledge points": _chart(f"{_PROBE}stability/rho"),
            "ρ_all: stability of all knowledge points": _chart(f"{_PROBE}stability/rho_all"),
        },
        "agreement": {
            "Grad-CAM cosine with the teacher": _chart(f"{agreement}cam_cosine"),
            "Grad-CAM win rate against the reference": _chart(f"{agreement}cam_win_rate"),
            "Grad-CAM energy on the object": _chart(f"{agreement}cam_energy_in_mask/(?:student|teacher)"),
            "adversarial transfer (first ε)": _chart(f"{agreement}adv_transfer"),
            "adversarial transfer at each ε": _chart(f"{agreement}adv_transfer{_EPS}"),
            "teacher fooling rate (first ε)": _chart(f"{agreement}teacher_fooling_rate"),
            "teacher fooling rate at each ε": _chart(f"{agreement}teacher_fooling_rate{_EPS}"),
            **invariance,
        },
        "FSS/RS": {
            "FSS: feature similarity to the teacher": _chart(f"{_PROBE}fss/.+"),
            "FSS (V-statistic)": _chart(f"{_PROBE}fss_v/.+"),
            "RS teacher: relevance to the labels": _chart(f"{_PROBE}rs/teacher/.+"),
            "RS student: relevance to the labels": _chart(f"{_PROBE}rs/student/.+"),
            "RS reference: relevance to the labels": _chart(f"{_PROBE}rs/reference/.+"),
            "RS distilled: what the student holds beyond the teacher": _chart(f"{_PROBE}rs/distilled/.+"),
            "RS residual: what the teacher holds that the student lacks": _chart(f"{_PROBE}rs/residual/.+"),
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
            "images whose σ reached the target entropy": _chart(f"{_PROBE}sigma/reached_target_fraction"),
            "images whose feature responds to noise": _chart(f"{_PROBE}sigma/effective_fraction"),
        },
    }


def hparams_metric_tags(trainer: pl.Trainer) -> list[str]:
    """The *HParams* metrics of a run: ``<p>/hparams/{n_fg,fg_ratio,d_mean,d_std,rho}`` per knowledge-point
    probe (``<p>`` = ``kd_probe`` or ``kd_probe/<name>``) and ``kd_probe/hparams/accuracy``."""
    tags = [f"{probe.prefix}/hparams/{key}" for probe in _knowledge_point_probes(trainer) for key in HPARAMS_METRICS]
    return [*tags, ACCURACY_TAG]


class ProbeCallback(pl.Callback):
    """The base of the kd_probe callbacks: what they add to each ``TensorBoardLogger``'s run folder, on rank zero,
    done by the first kd_probe callback of the Trainer (so once, however many there are).

    - At setup for fit, once per run folder (a ``kd_probe_tensorboard.json`` marker in it keeps a resumed or a
      second fit from writing it again): the *Custom Scalars* layout (:func:`probe_layout`) and the *HParams*
      declaration — the hyper-parameters (the LightningModule's and data module's, as Lightning logs them; the
      teacher's class as ``kd_probe/teacher``, ``none`` without one; each knowledge-point probe's layer and
      settings as ``<p>/<setting>``) and the metric tags (:func:`hparams_metric_tags`). Written before Lightning
      logs its own hyper-parameters, so the columns are kd_probe's also with ``default_hp_metric=True``.
    - At the end of training: the metrics' values — each knowledge-point probe's final ``n_fg``, ``fg_ratio``,
      ``d_mean``, ``d_std`` and ``rho`` (those of ``kd_probe_summary.json``) and the last ``val/acc`` — and at the
      end of a test with the same Trainer ``test/acc``, which the accuracy column then shows.

    A failing write is warned about once and training goes on. Subclasses that override ``setup`` or
    ``on_train_end`` call ``super()``.
    """

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not _acts(self, trainer):
            return
        read_pending_probe_sets(trainer)  # the probes given images="datamodule": their settings are read below
        for logger in _tensorboard_loggers(trainer):
            try:
                _start_run(logger, trainer, pl_module)
            except Exception as error:  # a probe never breaks training
                rank_zero_warn(
                    f"kd_probe: writing the TensorBoard layout and HParams to {logger.log_dir} failed "
                    f"({failure_reason(error)}); training goes on."
                )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _acts(self, trainer):
            _log_final_metrics(trainer, "fit")

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _acts(self, trainer):
            _log_final_metrics(trainer, "test")


def _acts(callback: ProbeCallback, trainer: pl.Trainer) -> bool:
    """Whether ``callback`` writes the run's TensorBoard entries: rank zero, a TensorBoard logger, no
    ``fast_dev_run``, and it is the Trainer's first kd_probe callback."""
    if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False) or not _tensorboard_loggers(trainer):
        return False
    first = next((c for c in trainer.callbacks if isinstance(c, ProbeCallback)), None)  # type: ignore[attr-defined]
    return first is callback


def _tensorboard_loggers(trainer: pl.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _knowledge_point_probes(trainer: pl.Trainer) -> list[KnowledgePointProbe]:
    from kd_probe.callbacks.knowledge_points import KnowledgePointProbe  # imports this module

    return [c for c in trainer.callbacks if isinstance(c, KnowledgePointProbe)]  # type: ignore[attr-defined]


def _start_run(logger: TensorBoardLogger, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """The layout and the HParams declaration into ``logger``'s run folder, unless its marker says they are
    there; the marker is written last, so a failed write is tried again by the next fit."""
    from torch.utils.tensorboard.summary import hparams

    marker = Path(logger.log_dir) / MARKER_FILE
    if marker.exists():
        return
    layout, params, metrics = probe_layout(), hyperparameters(trainer, pl_module), hparams_metric_tags(trainer)
    writer = logger.experiment
    writer.add_custom_scalars(layout)
    for summary in hparams(params, dict.fromkeys(metrics, math.nan)):  # only the names: values come at the end
        writer._get_file_writer().add_summary(summary)
    writer.flush()
    record = {"version": 1, "layout": layout, "hparams": params, "metrics": metrics}
    text = json.dumps(record, indent=2, ensure_ascii=False)
    write_atomically(marker, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def hyperparameters(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, bool | int | float | str]:
    """The *HParams* columns of a run: the LightningModule's and the data module's hyper-parameters (flattened
    with ``/``, as Lightning logs them), ``kd_probe/teacher`` (the class of the module's ``teacher``, ``none``
    without one) and each knowledge-point probe's ``<p>/layer`` and ``<p>/<setting>``."""
    params: dict[str, Any] = {}
    if getattr(pl_module, "_log_hyperparams", True):
        params.update(pl_module.hparams_initial)
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and getattr(datamodule, "_log_hyperparams", True):
        params.update(datamodule.hparams_initial)
    params.pop("_class_path", None)  # LightningCLI's own
    teacher = getattr(pl_module, "teacher", None)
    params["kd_probe/teacher"] = type(unwrap_compiled(teacher)).__name__ if isinstance(teacher, nn.Module) else "none"
    for probe in _knowledge_point_probes(trainer):
        params[f"{probe.prefix}/layer"] = probe.layer
        params.update({f"{probe.prefix}/{key}": value for key, value in probe.settings.items()})
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


def _log_final_metrics(trainer: pl.Trainer, stage: str) -> None:
    values: dict[str, float] = {}
    if stage == "fit":
        for probe in _knowledge_point_probes(trainer):
            metrics = final_metrics(probe.history, probe.foreground)
            values.update({f"{probe.prefix}/hparams/{key}": float(metrics[key]) for key in HPARAMS_METRICS})
    accuracy = trainer.callback_metrics.get(_ACCURACY[stage])
    if accuracy is not None:
        values[ACCURACY_TAG] = float(accuracy)
    finite = {tag: value for tag, value in values.items() if math.isfinite(value)}
    for logger in _tensorboard_loggers(trainer) if finite else []:
        try:
            logger.log_metrics(finite, step=trainer.global_step)
        except Exception as error:  # a probe never breaks training
            rank_zero_warn(
                f"kd_probe: logging the HParams metrics to {logger.log_dir} failed ({failure_reason(error)}); "
                "training goes on."
            )
