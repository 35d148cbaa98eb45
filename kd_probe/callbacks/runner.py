"""``ProbeRunner``: kd_probe's probes in any training loop, without a Lightning ``Trainer`` (issue 33).

The probes are Lightning callbacks; the runner calls their hooks where a ``Trainer`` would — ``start()`` before
training (the epoch-0 probes), ``step()`` after every optimizer step (the weight path length ``D``, methods §1.4),
``epoch_end()`` after every epoch (the probes due then), ``finish()`` at the end (the summaries) — and hands them
a stand-in for the ``Trainer`` with what they read of one: the step and epoch counters, a ``TensorBoardLogger``
writing to the run folder, one process. What they record is what they record in a Lightning run of the same
training: the same history, summary, probe files and TensorBoard tags, which ``kd-probe report`` reads alike.

``kd-probe probe --config`` drives a runner over a series of saved checkpoints
(:mod:`kd_probe.apps.probe_runs`), each checkpoint one ``step()`` and one ``epoch_end(epoch)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from kd_probe.callbacks._base import ProbeCallback
from kd_probe.callbacks._common import save_atomically
from kd_probe.core.layers import module_device

__all__ = ["RUNNER_FILE", "ProbeRunner"]

RUNNER_FILE = "kd_probe_runner.pt"  # the runner's state in the run folder: what a rerun continues from


class _Networks(pl.LightningModule):
    """The LightningModule the probes are handed: the networks as its ``student`` and ``teacher`` attributes (the
    names the probes look for), on the student's device. It never trains."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None) -> None:
        super().__init__()
        self.student = student
        if teacher is not None:
            self.teacher = teacher

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return module_device(self.student, torch.device("cpu"))


class _ProgressShown:
    """Stands for a progress-bar callback: the probes draw their own bars when the Trainer has one."""


class _LoopTrainer:
    """What kd_probe's callbacks read of a Lightning ``Trainer``, for a loop of one process that is not one."""

    is_global_zero = True
    global_rank = 0
    world_size = 1
    sanity_checking = False
    fast_dev_run = False
    received_sigterm = False
    precision = "32-true"
    strategy = None  # the collectives are only used with several processes

    def __init__(
        self,
        callbacks: list[pl.Callback],
        logger: TensorBoardLogger,
        max_epochs: int | None,
        datamodule: pl.LightningDataModule | None,
        progress: bool,
    ) -> None:
        self.callbacks, self.logger, self.loggers = callbacks, logger, [logger]
        self.max_epochs, self.datamodule = max_epochs, datamodule
        self.default_root_dir = logger.log_dir
        self.progress_bar_callback = _ProgressShown() if progress else None
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.global_step = 0
        self.current_epoch = 0


class ProbeRunner:
    """Run kd_probe's probes from a training loop of your own (or over saved checkpoints), no ``Trainer`` needed.

    Call :meth:`start` before the first optimizer step, :meth:`step` after each optimizer step, :meth:`epoch_end`
    after each epoch and :meth:`finish` at the end (or use the runner as a context manager, which starts and
    finishes it). Each probe runs when its schedule says, on the networks as they are at that call, and leaves
    them as it found them (modes, ``requires_grad``, gradients, the global RNG: methods §4.1); a probe that fails
    is warned about and recorded as failed, and the loop goes on.

    Args:
        probes: kd_probe callbacks (:class:`~kd_probe.KnowledgePointProbe`, :class:`~kd_probe.AgreementProbe`,
            :class:`~kd_probe.UniCAMProbe`, :class:`~kd_probe.WeightTrajectoryMonitor`) with their options, as
            in a ``Trainer(callbacks=...)``.
        folder: the run folder: TensorBoard events and the probes' files go there (``tensorboard --logdir`` its
            parent to compare runs; ``kd-probe report`` reads it).
        student: the network being trained (the probes' default ``module``).
        teacher: the teacher, for the probes that compare with one (agreement, UniCAM).
        max_epochs: the epochs of the training; needed by ``epochs="paper"`` schedules only.
        datamodule: a data module for probes given ``images="datamodule"`` (set up for fit, as a ``Trainer``
            would, by :meth:`start`).
        progress: draw a progress bar during each long probe.
        live: the loop trains as it probes, so each epoch is timed for the probes' share-of-an-epoch line;
            ``False`` over saved checkpoints, where an epoch takes no training time.

    Example::

        runner = ProbeRunner([KnowledgePointProbe(images, masks, layer="features.bn6")], "runs/mine/student",
                             student=model)
        runner.start()                          # epoch 0: before any step
        for epoch in range(1, epochs + 1):
            for x, y in loader:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
                runner.step()                   # after each optimizer step: the weight path length
            runner.epoch_end()                  # after `epoch` epochs: the probes due now
        runner.finish()
    """

    def __init__(
        self,
        probes: Sequence[pl.Callback],
        folder: str | os.PathLike[str],
        *,
        student: nn.Module,
        teacher: nn.Module | None = None,
        max_epochs: int | None = None,
        datamodule: pl.LightningDataModule | None = None,
        progress: bool = True,
        live: bool = True,
    ) -> None:
        if isinstance(probes, pl.Callback) or not all(isinstance(p, ProbeCallback) for p in probes):
            raise ValueError(
                f"`probes` must be a list of kd_probe callbacks (its probes and monitors), got {probes!r}."
            )
        for name, network in (("student", student), ("teacher", teacher)):
            if network is not None and not isinstance(network, nn.Module):
                raise ValueError(f"`{name}` must be an nn.Module, got {type(network).__name__}.")
        if max_epochs is not None and (
            isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1
        ):
            raise ValueError(f"`max_epochs` must be None or an integer ≥ 1, got {max_epochs!r}.")
        run = Path(folder)
        logger = TensorBoardLogger(save_dir=str(run.parent), name=run.name, version="", default_hp_metric=False)
        self.folder = run
        self.probes = list(probes)
        self.module = _Networks(student, teacher)
        self.trainer = _LoopTrainer(self.probes, logger, max_epochs, datamodule, progress)
        self.started = self.finished = False
        self._restored: dict[str, Any] = {}  # probes' states from load_state_dict, applied after their setup
        self.live = live

    @property
    def epoch(self) -> int:
        """The epochs trained so far (0 before the first :meth:`epoch_end`)."""
        return self.trainer.current_epoch

    @property
    def global_step(self) -> int:
        """The optimizer steps so far (:meth:`step` calls)."""
        return self.trainer.global_step

    def start(self, epoch: int | None = None) -> None:
        """Set the probes up (probe sets, layers, a dry run, the TensorBoard layout) and run those due at
        ``epoch``, the epochs trained so far: default 0 for a fresh run (before any step), or the epoch a loaded
        :meth:`state_dict` reached (whose probes are not repeated). A mistake in a probe's settings raises here."""
        if self.started:
            raise RuntimeError("ProbeRunner.start() was called already; call it once, before the first step.")
        if epoch is not None:
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < self.epoch:
                raise ValueError(f"`epoch` must be an integer ≥ {self.epoch}, got {epoch!r}.")
            self.trainer.current_epoch = epoch
        self.started = True
        datamodule = self.trainer.datamodule
        if datamodule is not None:
            datamodule.prepare_data()
            datamodule.setup("fit")
        self._call("setup", stage="fit")
        for probe in self.probes:  # as a Trainer restores callbacks: after setup, so probe sets read are checked
            if probe.state_key in self._restored:
                probe.load_state_dict(self._restored[probe.state_key])
        self._call("on_fit_start")
        self._call("on_train_start")
        if self.live:
            self._call("on_train_epoch_start")

    def step(self) -> None:
        """After an optimizer step: count it and let the probes read the weights (the path length ``D``)."""
        self._check_running("step")
        self.trainer.global_step += 1
        self._call("on_train_batch_end", outputs=None, batch=None, batch_idx=0)

    def epoch_end(self, epoch: int | None = None) -> None:
        """After an epoch: ``epoch`` epochs have been trained (default one more than before); the probes due at
        ``epoch`` run. Epochs must increase; gaps are allowed (checkpoints saved every few epochs)."""
        self._check_running("epoch_end")
        epoch = self.epoch + 1 if epoch is None else epoch
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch <= self.epoch:
            raise ValueError(f"`epoch` must be an integer above the last one, {self.epoch}, got {epoch!r}.")
        self.trainer.current_epoch = epoch - 1  # as in a Trainer's `on_train_epoch_end`: the epoch index
        self._call("on_train_epoch_end")
        self.trainer.current_epoch = epoch
        if self.live:
            self._call("on_train_epoch_start")

    def finish(self, status: str = "success") -> None:
        """End of training: the probes' summaries and the TensorBoard *HParams* values; the events are flushed."""
        self._check_running("finish")
        self.finished = True
        try:
            self._call("on_train_end")
            self._call("on_fit_end")
            self._call("teardown", stage="fit")
        finally:
            self.trainer.logger.finalize(status)

    def __enter__(self) -> ProbeRunner:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self.finished:
            if error is None:
                self.finish()
            else:  # the loop failed: keep what was recorded, flush the events, let the error through
                self.finished = True
                self.trainer.logger.finalize("failed")

    def state_dict(self) -> dict[str, Any]:
        """The counters and every probe's state (histories, path lengths): plain containers and tensors."""
        states = {probe.state_key: probe.state_dict() for probe in self.probes}
        return {"global_step": self.global_step, "epoch": self.epoch, "probes": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (before :meth:`start`, which hands each probe its state after setting
        it up, as a ``Trainer`` resuming does; a probe whose settings changed refuses it there): the counters are
        restored now, and the probes do not repeat recorded epochs."""
        if self.started:
            raise RuntimeError("ProbeRunner.load_state_dict() must come before start().")
        self.trainer.global_step, self.trainer.current_epoch = int(state["global_step"]), int(state["epoch"])
        self._restored = dict(state["probes"])

    def save(self) -> Path:
        """Write :meth:`state_dict` to ``kd_probe_runner.pt`` in the run folder (atomically); its path."""
        path = self.folder / RUNNER_FILE
        save_atomically(self.state_dict(), path)
        return path

    def _check_running(self, call: str) -> None:
        if not self.started or self.finished:
            state = "finish()ed" if self.finished else "not start()ed"
            raise RuntimeError(f"ProbeRunner.{call}() needs a started runner; this one is {state}.")

    def _call(self, hook: str, **arguments: Any) -> None:
        for probe in self.probes:
            getattr(probe, hook)(self.trainer, self.module, **arguments)
