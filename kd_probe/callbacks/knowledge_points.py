"""``KnowledgePointProbe``: live knowledge-point curves of a network during training (methods §1, §4)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor
from typing_extensions import override

from kd_probe.callbacks import _streaming
from kd_probe.callbacks._base import ProbeCallback
from kd_probe.callbacks._checks import check_knowledge_point_setup, check_sigma_options
from kd_probe.callbacks._common import (
    check_same_settings,
    find_network,
    gather_shards,
    probe_fingerprint,
    shard_indices,
)
from kd_probe.callbacks._dynamics import (
    PathLength,
    checkpoint_fields,
    checkpoint_scalars,
    history_metrics,
    tracked_weight_note,
)
from kd_probe.callbacks._guard import CostGuard, ProbeProgress, SideEffects, failure_reason, stop_check
from kd_probe.callbacks._knowledge_files import KnowledgePointFiles, display_normalization
from kd_probe.callbacks._precision import check_precision, float32_probe
from kd_probe.callbacks._probe_sources import ProbeSetReader
from kd_probe.callbacks._sigma_cost import estimate_sigma_cost, sigma_work
from kd_probe.callbacks._sigma_defaults import (
    LAM_PLAIN,
    choose_lam,
    estimated_epoch,
    first_probe_warning,
    with_live_defaults,
)
from kd_probe.callbacks._sigma_stream import streamed_sigma_maps
from kd_probe.callbacks._units import describe_units, log_probe_media, read_probe_inputs
from kd_probe.callbacks.schedule import ProbeSchedule
from kd_probe.core.knowledge_points import count_knowledge_points
from kd_probe.core.layers import module_device, resolve_layer
from kd_probe.core.sigma import estimate_sigma_maps
from kd_probe.core.units import ImageGrid
from kd_probe.io.paths import check_name
from kd_probe.io.run_files import HISTORY_FILE, SUMMARY_FILE, probe_file
from kd_probe.io.tags import KNOWLEDGE_POINTS, LEARNING_STABILITY, tag

__all__ = ["KnowledgePointProbe"]

HPARAMS_METRICS = (  # the live tags that are HParams metrics, as (group, leaf): the tab shows their last values
    (KNOWLEDGE_POINTS, "n_fg"),
    (KNOWLEDGE_POINTS, "fg_ratio"),
    (LEARNING_STABILITY, "d_mean"),
    (LEARNING_STABILITY, "d_std"),
    (LEARNING_STABILITY, "rho"),
)

_GATHERED = ("entropy", "sigma_f", "effective", "reached_target", "boosted", "step")


class KnowledgePointProbe(KnowledgePointFiles, ProbeSetReader, ProbeCallback):
    """Find the knowledge points of a network on held-out images during training and log their curves.

    At each scheduled checkpoint (before the first optimizer step — "epoch 0" — and after scheduled
    epochs), optimises one σ map per probe image at ``layer`` (:func:`~kd_probe.estimate_sigma_maps`), counts
    knowledge points on the foreground and the background (:func:`~kd_probe.count_knowledge_points`),
    logs the results and keeps the per-image history (entropy maps, knowledge points, flags, with epoch
    and global step) in the callback's state (for resume) and in ``kd_probe_history[_<name>].pt`` in the
    logger's directory (for offline reports). Works with any LightningModule; under DDP the probe images
    are sharded across ranks and gathered, so the history is identical to a single-process run.

    A probe problem never stops training: a failed computation (e.g. NaN features of a diverged model) is one
    history entry marked ``failed`` with the reason; a logger, the TensorBoard media or the history file that
    fails is warned about once and noted in the entry's ``problems`` (plain strings: the file loads with
    ``torch.load(weights_only=True)``). Ctrl-C and SIGTERM stop a running probe within a σ step and let
    Lightning shut down. At the start of fit a dry run logs the expected cost per probe; before the first probe,
    a probe expected to cost more than 3× the training between two probes (an epoch estimated from the dry run)
    is warned about with settings that fit; after the first epoch the probe logs which share of a training epoch
    it costs (one warning per run when it is more than the epochs between probes).

    Args:
        images: probe inputs: images ``[N, C, H, W]`` (normalised as the model expects), token ids ``[N, T]`` or
            point clouds ``[N, P, 3]`` (with ``units``), a dataset of ``(input, label, foreground)`` triples, a
            data module with a ``probe_set`` (whose ``units`` attribute, when it has one, picks the unit type),
            ``"datamodule"`` (that of the Trainer's data module, read at ``setup``) or the path of a file
            ``torch.save({"images": ..., "masks": ...})`` (the two forms a YAML config can write).
        masks: foreground masks ``[N, H, W]`` (images) or per-unit flags ``[N, U]`` when ``images`` is a tensor.
        layer: dotted module name inside the probed network whose output is the feature.
        epochs: epochs after which to probe (0 = before training), or ``"paper"`` ([KP]'s checkpoints
            0, 2, 5, 10, …, 150 scaled to ``max_epochs``).
        every_n_epochs: probe every n epochs instead (and at 0). Neither given: every epoch.
        module: attribute path of the network in the LightningModule (default ``student`` when present,
            else the LightningModule itself).
        name: sub-prefix of the tags (``1_knowledge_points/<name>/...``) and of the history file, so that several
            probes (student and teacher, two layers) can run in one Trainer; one safe path component
            (letters, digits, ``_``, ``-``, ``.``).
        log_images: how many probe images appear in the ``maps`` image grid (0: none).
        threshold: ``b`` of methods §1.3, in nats.
        baseline: ``"dataset"``, ``"image"`` or a float (methods §1.3).
        sigma_options: options of :func:`~kd_probe.estimate_sigma_maps` (``units``, ``grid``, ``method``,
            ``samples``, ``passes``, ``steps``, ``lr``, ``lam``, ``target_entropy``, ``boost``, ``feature_relu``,
            ``seed``, ``max_batch``, ``memory_budget``, ``noise_device``, ``precision``, ``channels_last``,
            ``fold_batchnorm``, ``patience``). The probe's defaults are sized for live curves during training:
            ``method="secant"`` with ``passes=2`` and ``samples=64`` (the paper's procedure is ``method="faithful"``;
            the docs page measures the trade-off). ``lam`` (λ): the [KP] authors used 7 for VGG/AlexNet and 6 for
            ResNets; when not given, 6 if the network adds skip connections before ``layer`` (traced with
            ``torch.fx``), else 7, said at setup. The λ used is recorded in the summary's ``settings`` and the
            report's header.

    Logged metrics (``<k>``, ``<l>``, ``<s>`` = ``1_knowledge_points``, ``2_learning_stability``, ``7_sigma``,
    each followed by ``/<name>`` for a named probe; step = ``trainer.global_step``):
        - ``<k>/n_fg``, ``<k>/n_bg``: mean knowledge points per image on the foreground / background.
        - ``<k>/fg_ratio``: λ_fg, mean of ``N_fg / (N_fg + N_bg)`` (0 without points).
        - ``<k>/baseline_entropy``: H̄, the background entropy the units are compared with.
        - ``<s>/reached_target_fraction``, ``<s>/effective_fraction``: images whose σ optimisation
          reached the target entropy / whose features respond to noise (``σ_f > 0``).
        - ``<k>/maps`` (image, TensorBoard): images: per image the input, its entropy map and its knowledge
          points (red) with the foreground outline (green), columns named in a strip on top; tokens: a strip per sequence (entropy, then knowledge
          points red / foreground green) and the same as text; points: a top view per cloud (entropy; knowledge
          points red, object green) and ``<k>/maps_points`` (mesh plugin, points coloured likewise).
        - ``<k>/entropy_gap`` (histogram, TensorBoard): ``H̄ − H_i`` over all units.
        - ``<l>/d_mean``, ``<l>/d_std``: D_mean and D_std over the checkpoints so far (methods §1.4), logged
          again at the end of fit; ``<l>/weight_distance``: D, the probed layer's weight path length so far.
        - ``<l>/rho``, ``<l>/rho_all``: live ρ of the foreground / of all knowledge points (methods §1.5).
        - ``<k>/n_fg``, ``<k>/fg_ratio``, ``<l>/d_mean``, ``<l>/d_std``, ``<l>/rho`` are the *HParams* tab's
          metrics: it shows their last values, the summary's (with the run's Custom Scalars layout:
          :class:`ProbeCallback`); the columns are ``kd_probe[/<name>]/layer`` and ``kd_probe[/<name>]/<setting>``.

    Example::

        probe = KnowledgePointProbe(data, layer="features.bn6", epochs="paper")  # λ and σ settings: the defaults
        pl.Trainer(max_epochs=20, callbacks=[probe]).fit(DistillationModule(student, teacher), data)
    """

    media = "the `maps` images and histograms are"  # logged to TensorBoard only (ProbeCallback warns once without one)

    def __init__(
        self,
        images: Any,
        masks: Tensor | None = None,
        *,
        layer: str,
        epochs: list[int] | str | None = None,
        every_n_epochs: int | None = None,
        module: str | None = None,
        name: str | None = None,
        log_images: int = 4,
        threshold: float = 0.2,
        baseline: str | float = "dataset",
        **sigma_options: Any,
    ) -> None:
        for key in [key for key in ("method", "passes", "samples") if key in sigma_options]:
            if sigma_options[key] is None:  # as not given: the probe's defaults (`patience=None` means something)
                del sigma_options[key]
        check_sigma_options(with_live_defaults(sigma_options))  # secant, 2 passes × 64 samples unless given
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"`layer` must be a dotted module name, got {layer!r}.")
        name = None if name is None else check_name(name)
        if not isinstance(log_images, int) or log_images < 0:
            raise ValueError(f"`log_images` must be an integer ≥ 0, got {log_images!r}.")
        self.schedule = ProbeSchedule(epochs, every_n_epochs)
        self.layer, self.module_path, self.name, self.log_images = layer, module, name, log_images
        self.threshold, self.baseline = threshold, baseline
        self.sigma_options = sigma_options  # kept as given: `kd-probe fit` finds the σ options through this name
        self.chosen_lam: float | None = None  # λ picked by architecture at setup when `lam` is not given
        self.fingerprint: str | None = None  # of the probe set, once read
        self.normalization: dict[str, list[float]] = {}  # the probe images' mean/std, when their source says
        self._take_probe_set(images, masks=masks)  # now, or in `setup` for images="datamodule"
        self.history: list[dict[str, Any]] = []
        self.path = PathLength()
        self._network: torch.nn.Module | None = None
        owner = "KnowledgePointProbe" + (f" {name!r}" if name else "")
        self.side_effects = SideEffects(owner)
        knobs = "probe fewer images, use fewer `samples` or `steps` or a coarser `grid`, or probe less often (`epochs`/`every_n_epochs`)"
        self.cost = CostGuard(owner, knobs)
        self._seconds_per_image: float | None = None  # of one perturbed image, from the dry run at the start of fit

    def _read_probe_set(self, source: Any, masks: Tensor | None = None) -> None:
        self.probe_set = read_probe_inputs(source, masks, self.sigma_options)
        self.images, self.masks = self.probe_set.inputs, self.probe_set.masks
        if self.probe_set.units is not None:
            self.sigma_options["units"] = self.probe_set.units
        self.foreground = self.probe_set.foreground  # the probe inputs' foreground units
        self.fingerprint = probe_fingerprint(self.images, self.masks)
        image_units = isinstance(self.probe_set.units, (ImageGrid, type(None))) and self.images.dim() == 4
        self.normalization = display_normalization(source, self.images.shape[1]) if image_units else {}
        zeros = torch.zeros(1, *self.foreground.shape[1:])  # counting on them checks threshold and baseline now
        count_knowledge_points(zeros, self.foreground[:1], threshold=self.threshold, baseline=self.baseline)

    @property
    def prefix(self) -> str:
        """What the probe's *HParams* columns start with: ``kd_probe`` or ``kd_probe/<name>``."""
        return f"kd_probe/{self.name}" if self.name else "kd_probe"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layer=self.layer, name=self.name, module=self.module_path)

    @override
    def sets_up(self, trainer: pl.Trainer) -> bool:
        return not getattr(trainer, "fast_dev_run", False)

    @override
    def check_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = find_network(pl_module, self.module_path)
        resolve_layer(network, self.layer)
        check_knowledge_point_setup(network, self.images, self.layer)
        self.schedule.resolve(trainer.max_epochs)  # "paper" needs max_epochs: refuse now, not later
        dry_run = {**self.engine_options, "samples": 1, "steps": 1}
        dry_run.update({"passes": 1} if "passes" in dry_run else {})
        device = module_device(network)
        estimate_sigma_maps(network, self.images[:1].to(device), layer=self.layer, **dry_run)
        if "lam" not in self.sigma_options:
            self.chosen_lam, why = choose_lam(network, self.layer, self.images[:1].to(device), self.probe_set.units)
            rank_zero_info(f"{self.side_effects.owner}: {why}.")
        tracked = self.path.choose(network, self.layer, self.images[:1].to(device))
        if tracked != self.layer:
            rank_zero_info(f"kd_probe: {tracked_weight_note(network, self.layer, tracked)}")

    @override
    def hparams(self) -> dict[str, Any]:
        """The probe's layer and settings as *HParams* columns ``<p>/layer``, ``<p>/<setting>``."""
        return {f"{self.prefix}/layer": self.layer, **{f"{self.prefix}/{k}": v for k, v in self.settings.items()}}

    @override
    def hparams_metric_tags(self) -> list[str]:
        """``1_knowledge_points[/<name>]/{n_fg,fg_ratio}``, ``2_learning_stability[/<name>]/{d_mean,d_std,rho}``."""
        return [tag(group, self.name, leaf) for group, leaf in HPARAMS_METRICS]

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_precision(trainer, self.side_effects.owner)  # every rank: refuse bf16 weights, note float32 once
        if trainer.is_global_zero and not getattr(trainer, "fast_dev_run", False):
            self.side_effects.run(None, "estimating the cost", self._estimate_cost, trainer, pl_module)

    def _estimate_cost(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = find_network(pl_module, self.module_path)
        device = module_device(network, pl_module.device)
        options = self.engine_options
        found = estimate_sigma_cost(network, self.images, self.layer, options, trainer.world_size, device)
        self.cost.expect(found.seconds, found.detail)
        self._seconds_per_image = found.per_image

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cost.epoch_started()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a fresh run: epoch 0, before any optimizer step. A resumed run whose checkpoint was written before
        # this callback's end-of-epoch probe (e.g. saved on validation end): that probe, with the same weights.
        if getattr(trainer, "fast_dev_run", False):
            return
        self._network = find_network(pl_module, self.module_path)
        self.path.start(self._network, trainer.global_step)
        if trainer.is_global_zero and not self.history and self._seconds_per_image is not None:
            epoch, images = estimated_epoch(trainer, self._seconds_per_image), int(self.images.shape[0])
            self.cost.gap = self.schedule.mean_gap(trainer.max_epochs)
            text = first_probe_warning(self.cost.expected, epoch, self.cost.gap, self.engine_options, images)
            if text:
                self.cost.warn_once(text)
        self._maybe_probe(trainer, pl_module, trainer.current_epoch)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._network is not None:
            self.path.update(self._network, trainer.global_step)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(trainer, "fast_dev_run", False) or not self.history or not trainer.is_global_zero:
            return
        self._log_scalars(trainer, None, self._dynamics(None))  # the final values: the HParams tab shows them
        self.side_effects.run(None, f"writing {probe_file(SUMMARY_FILE, self.name)}", self._write_summary, trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.cost.epoch_ended()
        self._maybe_probe(trainer, pl_module, trainer.current_epoch + 1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "path": self.path.state_dict(), "settings": self._recorded()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved, current = state_dict.get("settings"), self._recorded()
        if isinstance(saved, dict) and current is not None:  # older checkpoints, or a probe set not read yet
            check_same_settings(self.side_effects.owner, saved, current)
        self.history = list(state_dict.get("history", []))
        self.path.load_state_dict(state_dict.get("path", {}))

    def _maybe_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        if (
            trainer.sanity_checking
            or getattr(trainer, "fast_dev_run", False)
            or any(e["epoch"] == epoch for e in self.history)
        ):
            return
        if self.schedule.includes(epoch, trainer.max_epochs):
            stop_check(trainer)()  # SIGTERM received: let Lightning shut down rather than start a probe
            self.cost.timed(float32_probe()(lambda: self.probe(trainer, pl_module, epoch)))

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> dict[str, Any]:
        """Probe now (every rank must call it under DDP): compute and gather (collectives, every rank), append
        exactly one history entry (failed, with the reason, when computing failed), then on rank zero log and
        save it, each side effect in its own guard. SIGTERM stops the σ optimisation within a step."""
        network = find_network(pl_module, self.module_path)
        device = module_device(network, pl_module.device)
        count, rank, world = self.images.shape[0], trainer.global_rank, trainer.world_size
        local = shard_indices(count, rank, world)
        entry: dict[str, Any] = {
            "epoch": epoch,
            "global_step": trainer.global_step,
            "distance": self.path.distance,
            "method": sigma_work(self.engine_options)[0],
            "failed": None,
        }
        fields: dict[str, Tensor] = {}
        try:
            _, units, unit = sigma_work(self.engine_options)
            chunks = len(_streaming.chunk_slices(len(local)))  # the probe set goes to the device in chunks
            with ProbeProgress(trainer, f"{self.prefix} epoch {epoch}", units * chunks, unit) as tick:
                maps = streamed_sigma_maps(
                    network,
                    self.images,
                    local,
                    device,
                    tick,
                    units,
                    layer=self.layer,
                    check=stop_check(trainer),
                    **self.filled_in,
                    **self.sigma_options,
                )
            fields = {key: getattr(maps, key).float().to(device) for key in _GATHERED}
            valid = self.probe_set.valid
            finite = torch.isfinite(fields["entropy"]) | (False if valid is None else ~valid[local].to(device))
            if not finite.all():
                raise FloatingPointError(f"non-finite σ maps at layer {self.layer!r}")
        except Exception as error:  # a probe problem must never stop training (Ctrl-C and SIGTERM do)
            entry["failed"] = failure_reason(error)
        if self._any_rank_failed(trainer, entry["failed"] is not None, device):
            entry["failed"] = entry["failed"] or "failed on another rank"
        else:  # every rank gathers here, before any rank-zero-only work
            full = {key: gather_shards(trainer, value.to(device), count).cpu() for key, value in fields.items()}
            try:
                entry.update(checkpoint_fields(full, self.masks, threshold=self.threshold, baseline=self.baseline))
            except Exception as error:
                entry["failed"] = failure_reason(error)
        if entry["failed"] is not None:
            warnings.warn(
                f"kd_probe: knowledge-point probe at epoch {epoch} failed ({entry['failed']}); "
                "training goes on and the checkpoint is marked as failed in the history.",
                stacklevel=2,
            )
        self.history.append(entry)
        self._publish(trainer, entry)
        return entry

    def _any_rank_failed(self, trainer: pl.Trainer, failed: bool, device: torch.device) -> bool:
        if trainer.world_size == 1:
            return failed
        flags = trainer.strategy.all_gather(torch.tensor([float(failed)], device=device))
        return bool(flags.sum() > 0)

    @rank_zero_only
    def _publish(self, trainer: pl.Trainer, entry: dict[str, Any]) -> None:
        """Rank zero, after the entry is recorded: scalars to each logger, the dynamics, the media, the history
        file — each guarded (a problem is warned about once and noted in ``entry["problems"]``)."""
        if entry["failed"] is None:
            scalars = checkpoint_scalars(entry, self.name)
            self._log_scalars(trainer, entry, {**scalars, **self._dynamics(entry)})
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    what = "writing the maps and the histogram to TensorBoard"
                    group = tag(KNOWLEDGE_POINTS, self.name)
                    media = (logger.experiment, group, self.probe_set, entry, self.log_images)
                    self.side_effects.run(entry, what, log_probe_media, *media, trainer.global_step)
        what = f"saving {probe_file(HISTORY_FILE, self.name)}"
        self.side_effects.run(entry, what, self._save_history, trainer)
        what = f"writing {probe_file(SUMMARY_FILE, self.name)}"  # after every probe: an unfinished run is reported
        self.side_effects.run(entry, what, self._write_summary, trainer, False)

    def _log_scalars(self, trainer: pl.Trainer, entry: dict[str, Any] | None, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            what = f"logging scalars to {type(logger).__name__}"
            self.side_effects.run(entry, what, logger.log_metrics, metrics, step=trainer.global_step)

    def _dynamics(self, entry: dict[str, Any] | None) -> dict[str, float]:
        """Live D_mean, D_std, ρ, ρ_all and the path length over the checkpoints so far (methods §1.4–1.5)."""
        values: dict[str, float] = {}
        what = "computing D_mean, D_std and ρ"
        self.side_effects.run(entry, what, lambda: values.update(history_metrics(self.history, self.foreground)))
        names = ("d_mean", "d_std", "rho", "rho_all", "weight_distance")
        return {
            tag(LEARNING_STABILITY, self.name, key): values[key]
            for key in names
            if key in values and math.isfinite(values[key])
        }

    @property
    def lam(self) -> float:
        """λ of the σ objective: ``lam`` when given, else the one chosen by architecture at setup (7 before)."""
        given = self.sigma_options.get("lam")
        return float(given) if given is not None else self.chosen_lam or LAM_PLAIN

    @property
    def engine_options(self) -> dict[str, Any]:
        """The options :func:`~kd_probe.estimate_sigma_maps` runs with: the σ options and λ."""
        return {**with_live_defaults(self.sigma_options), "lam": self.lam}

    @property
    def filled_in(self) -> dict[str, Any]:
        """What :attr:`engine_options` adds to the σ options as given: the probe's defaults and λ."""
        return {key: value for key, value in self.engine_options.items() if key not in self.sigma_options}

    @property
    def settings(self) -> dict[str, Any]:
        """The σ options (with the method, λ and the secant's passes and samples, also when defaulted), threshold
        and baseline, as recorded."""
        return {
            "method": sigma_work(self.engine_options)[0],
            **self.engine_options,
            **({"units": describe_units(self.probe_set.units)} if self.probe_set.units is not None else {}),
            "threshold": self.threshold,
            "baseline": self.baseline,
        }

    def _recorded(self) -> dict[str, Any] | None:
        """What the history depends on: the layer, the network, the probe set's fingerprint and the settings
        (``None`` before the probe set is read: ``images="datamodule"`` outside fit)."""
        if self.fingerprint is None:
            return None
        return {"layer": self.layer, "module": self.module_path, "probe_set": self.fingerprint, **self.settings}
