"""The base classes of the kd_probe callbacks (they know none of their subclasses).

:class:`ProbeCallback` is what every kd_probe callback is: the setup every probe opens with, and what the
callbacks add to a TensorBoard run folder (the *Custom Scalars* layout and *HParams*), each probe contributing its
own columns and final metrics through methods it overrides. :class:`BatchProbe` is a probe of one fixed held-out
batch on a schedule (``AgreementProbe``, ``UniCAMProbe``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from kd_probe.callbacks._common import check_same_settings
from kd_probe.callbacks._guard import CostGuard, SideEffects, failure_reason, stop_check
from kd_probe.callbacks._precision import check_precision, float32_probe
from kd_probe.callbacks._probe_sources import read_pending_probe_sets
from kd_probe.callbacks._sharding import failure_of
from kd_probe.callbacks._tensorboard import ACCURACY_TAGS, hyperparameters, start_run, tensorboard_loggers
from kd_probe.io.tags import tag

__all__ = ["BatchProbe", "ProbeCallback", "hparams_metric_tags", "probe_callbacks"]


class ProbeCallback(pl.Callback):
    """The base of the kd_probe callbacks.

    **Setup.** At setup for fit (:meth:`setup`): the probe sets given as ``images="datamodule"`` are read (this
    probe's and the others'), then the subclass checks what needs the Trainer (:meth:`check_setup`: layers,
    shapes, a dry run), then — when the probe logs media (``media``) and the Trainer has no ``TensorBoardLogger``
    — one warning that only the scalars are logged. A subclass that must not set up at all (say, under
    ``fast_dev_run``) overrides :meth:`sets_up`.

    **TensorBoard.** What the callbacks add to each ``TensorBoardLogger``'s run folder, on rank zero, done by the
    first kd_probe callback of the Trainer (so once, however many there are), at setup for fit and once per run
    folder (a ``kd_probe_tensorboard.json`` marker in it keeps a resumed or a second fit from writing it again):
    the *Custom Scalars* layout (:func:`~kd_probe.callbacks._tensorboard.probe_layout`) and the *HParams*
    declaration — the hyper-parameters (the LightningModule's and data module's, as Lightning logs them; the
    teacher's class as ``kd_probe/teacher``, ``none`` without one; each probe's :meth:`hparams`) and the metric
    tags (each probe's :meth:`hparams_metric_tags`, then Lightning's ``val/acc`` and ``test/acc``). The metrics
    are live tags: the HParams tab shows each one's last value (a knowledge-point probe logs its final D_mean,
    D_std and ρ at the end of fit). Written before Lightning logs its own hyper-parameters, so the columns are
    kd_probe's also with ``default_hp_metric=True``.

    A failing write is warned about once and training goes on. Subclasses that override ``setup`` call
    ``super()``.
    """

    media: str | None = None  # what the probe logs to TensorBoard only ("the UniCAM map grids are"), if anything
    _warned_no_tensorboard = False

    def sets_up(self, trainer: pl.Trainer) -> bool:
        """Whether :meth:`setup` runs for this Trainer (always, unless a subclass says otherwise)."""
        return True

    def check_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check what needs the Trainer and the module (layers, shapes, a dry run), raising a ``ValueError``
        naming the argument on a mistake; called by :meth:`setup` for fit, after the probe sets are read."""

    def hparams(self) -> dict[str, Any]:
        """This probe's *HParams* columns, ``{column: value}`` (none by default)."""
        return {}

    def hparams_metric_tags(self) -> list[str]:
        """This probe's scalar tags that are *HParams* metrics, whose last value the tab shows (none by default)."""
        return []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.sets_up(trainer):
            return
        read_pending_probe_sets(trainer)  # images="datamodule": this probe's and the others'
        self.check_setup(trainer, pl_module)
        if self.media is not None and not tensorboard_loggers(trainer) and not self._warned_no_tensorboard:
            rank_zero_warn(f"kd_probe: no TensorBoardLogger: {self.media} not logged, scalars are.")
            self._warned_no_tensorboard = True
        if not _acts(self, trainer):
            return
        probes = probe_callbacks(trainer)
        params = hyperparameters(trainer, pl_module, {k: v for p in probes for k, v in p.hparams().items()})
        for logger in tensorboard_loggers(trainer):
            try:
                start_run(logger, params, hparams_metric_tags(trainer))
            except Exception as error:  # a probe never breaks training
                rank_zero_warn(
                    f"kd_probe: writing the TensorBoard layout and HParams to {logger.log_dir} failed "
                    f"({failure_reason(error)}); training goes on."
                )


def probe_callbacks(trainer: pl.Trainer) -> list[ProbeCallback]:
    """The Trainer's kd_probe callbacks, in order."""
    return [c for c in trainer.callbacks if isinstance(c, ProbeCallback)]  # type: ignore[attr-defined]


def hparams_metric_tags(trainer: pl.Trainer) -> list[str]:
    """The *HParams* metrics of a run: each probe's :meth:`ProbeCallback.hparams_metric_tags` (a knowledge-point
    probe's ``1_knowledge_points[/<name>]/{n_fg,fg_ratio}`` and ``2_learning_stability[/<name>]/{d_mean,d_std,rho}``),
    then Lightning's ``val/acc`` and ``test/acc``."""
    return [*(tag for probe in probe_callbacks(trainer) for tag in probe.hparams_metric_tags()), *ACCURACY_TAGS]


def _acts(callback: ProbeCallback, trainer: pl.Trainer) -> bool:
    """Whether ``callback`` writes the run's TensorBoard entries: rank zero, a TensorBoard logger, no
    ``fast_dev_run``, and it is the Trainer's first kd_probe callback."""
    if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False) or not tensorboard_loggers(trainer):
        return False
    first = next(iter(probe_callbacks(trainer)), None)
    return first is callback


class BatchProbe(ProbeCallback):
    """What the probes of one fixed held-out batch share (``AgreementProbe``, ``UniCAMProbe``): probe at epoch 0
    (before any optimizer step) and after every ``every_n_epochs`` epochs, never during sanity checking or
    ``fast_dev_run``, never twice for one epoch (so a resumed run goes on where it stopped). Under DDP every rank
    probes: :meth:`measure` shares the images out over the ranks and gathers what must be whole
    (:class:`~kd_probe.callbacks._sharding.Shards`; a failure on any rank fails the probe on every rank, with
    the same reason). A probe is computed first (:meth:`measure`), then recorded as exactly one history entry on
    every rank (failed, with the reason, when computing raised), then published on rank zero (:meth:`publish`:
    scalars, images, files), each side effect in its own guard: a probe problem never stops training. At the
    start of fit a dry run (:meth:`estimate_cost`, shared by the processes under DDP) says what a probe costs,
    and after the first epoch which share of an epoch. Probes compute in float32 with autocast off (a
    mixed-precision Trainer is noted once; a Trainer whose weights are not float32, ``precision="bf16-true"``, is
    refused at the start of fit)."""

    description = "probe"
    knobs = "probe fewer images or less often (`every_n_epochs`)"
    every_n_epochs: int
    history: list[dict[str, Any]]
    name: str | None
    side_effects: SideEffects
    cost: CostGuard

    def _start_guards(self) -> None:
        owner = type(self).__name__ + (f" {self.name!r}" if self.name else "")
        self.side_effects, self.cost = SideEffects(owner), CostGuard(owner, self.knobs)

    def recorded_settings(self) -> dict[str, Any]:
        """What this probe's history depends on (layers, networks, the probe set's fingerprint, settings): kept
        in the checkpoint so that resuming with any of them changed is refused rather than mixed into one history."""
        return {}

    def _settings_now(self) -> dict[str, Any] | None:
        """:meth:`recorded_settings`, or ``None`` while the probe set is not read (``images="datamodule"``)."""
        return None if getattr(self, "_pending_probe_set", None) is not None else self.recorded_settings()

    def _check_resume(self, state_dict: dict[str, Any]) -> None:
        """Refuse a checkpoint whose probe was set up differently (one sentence naming the setting, both values);
        checkpoints written before settings were recorded load as before."""
        saved, current = state_dict.get("settings"), self._settings_now()
        if isinstance(saved, dict) and current is not None:
            check_same_settings(self.side_effects.owner, saved, current)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> tuple[dict[str, Any], Any]:
        """Compute one probe without side effects: the history entry, and what :meth:`publish` shows. Every rank
        calls it under DDP (it makes collectives); a failure raises on every rank."""
        raise NotImplementedError

    group: str  # the numbered group of the probe's tags (kd_probe.io.tags), a subclass's

    @property
    def prefix(self) -> str:
        """What the probe's tags start with: ``group`` or ``group/<name>`` (:func:`~kd_probe.io.tags.tag`)."""
        return tag(self.group, self.name)

    @property
    def scalar_prefix(self) -> str:
        """What the entry's scalars are logged under: ``prefix/``."""
        return f"{self.prefix}/"

    media_what = "writing the images to TensorBoard"  # the media side effect, in a warning's words
    log_images: Any = 0  # whether (how many) images the probe logs to TensorBoard

    def publish(self, trainer: pl.Trainer, entry: dict[str, Any], shown: Any) -> None:
        """Log and save a recorded entry (``shown`` is ``None`` for a failed one), every side effect guarded
        with ``self.side_effects.run``; called on rank zero only. By default: the entry's finite numbers as
        scalars under :attr:`scalar_prefix` to every logger, :meth:`write_media` to each TensorBoard logger when
        ``log_images``, then the probe's file (:meth:`save_file`)."""
        if shown is not None:
            step = trainer.global_step
            metrics = {
                f"{self.scalar_prefix}{key}": value
                for key, value in entry.items()
                if key not in ("epoch", "global_step") and isinstance(value, float) and math.isfinite(value)
            }
            for logger in trainer.loggers:
                what = f"logging scalars to {type(logger).__name__}"
                self.side_effects.run(entry, what, logger.log_metrics, metrics, step=step)
                if isinstance(logger, TensorBoardLogger) and self.log_images:
                    self.side_effects.run(entry, self.media_what, self.write_media, logger, shown, step)
        self.save_file(trainer, entry)

    def write_media(self, logger: TensorBoardLogger, shown: Any, step: int) -> None:
        """The probe's images for one entry (none by default)."""

    def save_file(self, trainer: pl.Trainer, entry: dict[str, Any]) -> None:
        """Write the probe's file, guarded (none by default)."""

    def estimate_cost(self, pl_module: pl.LightningModule) -> tuple[float, str]:
        """Seconds one probe is expected to take (from a tiny dry run), and what that covers."""
        raise NotImplementedError

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> dict[str, Any]:
        """Probe now (every rank must call it under DDP): compute, append exactly one history entry, publish it on
        rank zero."""
        shown = None
        try:
            with float32_probe():  # autocast off: the probe's numbers do not depend on the training precision
                entry, shown = self.cost.timed(lambda: self.measure(trainer, pl_module, epoch))
        except Exception as error:  # a probe problem never stops training nor loses the history
            reason = failure_of(error)
            rank_zero_warn(f"kd_probe: the {self.description} at epoch {epoch} failed ({reason}); training continues.")
            entry = {"epoch": epoch, "global_step": trainer.global_step, "failed": reason}
        self.history.append(entry)
        if trainer.is_global_zero:
            self.publish(trainer, entry, shown)
        return entry

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_precision(trainer, self.side_effects.owner)  # every rank: a refused precision stops them all
        if trainer.is_global_zero and not getattr(trainer, "fast_dev_run", False):
            with float32_probe():
                self.side_effects.run(None, "estimating the cost", self._expect_cost, trainer, pl_module)

    def _expect_cost(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """:meth:`estimate_cost`, shared by the processes under DDP (each computes its share of the images)."""
        seconds, detail = self.estimate_cost(pl_module)
        world = trainer.world_size
        if world > 1:
            seconds, detail = seconds / world, f"{detail}, shared by {world} processes"
        self.cost.expect(seconds, detail)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cost.gap = float(self.every_n_epochs)  # a probe's cost is compared with the training between probes
        self._maybe_probe(trainer, pl_module, trainer.current_epoch)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cost.epoch_started()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.cost.epoch_ended()
        self._maybe_probe(trainer, pl_module, trainer.current_epoch + 1)

    def _maybe_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        if epoch % self.every_n_epochs or any(entry["epoch"] == epoch for entry in self.history):
            return
        stop_check(trainer)()  # SIGTERM received: let Lightning shut down rather than start a probe
        self.probe(trainer, pl_module, epoch)
