"""``WeightTrajectoryMonitor``: how straight and how steady the weights travel (methods §1.6)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from typing_extensions import override

from kd_probe.callbacks._base import ProbeCallback
from kd_probe.callbacks._common import find_network
from kd_probe.core.dynamics import CountSketch, cosine, path_efficiency
from kd_probe.core.layers import resolve_layer

__all__ = ["WeightTrajectoryMonitor"]


class _Track:
    """The trajectory of one group of parameters: start, last step, last epoch end, every epoch's update."""

    def __init__(self, vector: Tensor) -> None:
        self.start = vector
        self.step = vector
        self.epoch = vector
        self.updates: list[Tensor] = []  # Δ_e, one per finished epoch
        self.update_steps: list[int] = []  # the global step at the end of each epoch
        self.path = 0.0  # Σ_t ‖W_{t+1} − W_t‖ (raw, for the path efficiency)
        self.start_norm = _norm(vector)  # ‖W_0‖, the unit of the normalised lengths

    def state(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "epoch": self.epoch,
            "updates": self.updates,
            "update_steps": self.update_steps,
            "path": self.path,
        }

    @classmethod
    def restore(cls, state: dict[str, Any], current: Tensor) -> _Track:
        track = cls(state["start"])
        track.step, track.epoch, track.path = current, state["epoch"], float(state["path"])
        track.updates, track.update_steps = list(state["updates"]), list(state["update_steps"])
        return track


class WeightTrajectoryMonitor(ProbeCallback):
    """Log the length, the direction stability and the straightness of the weights' path during training.

    For each tracked group of parameters (default: every top-level child with parameters of the probed
    network — ``student`` in a ``DistillationModule``, else the LightningModule — or an explicit list of
    dotted module names) it logs, with ``W`` the group's flattened parameters:

    - every ``every_n_steps`` optimizer steps, the normalised step length ``‖W_t − W_{t−n}‖ / ‖W_0‖``;
    - every epoch ``e``: the cumulative normalised distance, ``update_cosine = cos(Δ_e, Δ_{e−1})`` and
      ``direction_consistency = cos(Δ_e, W_e − W_0)`` with ``Δ_e = W_e − W_{e−1}``;
    - at the end of fit: ``final_alignment = cos(Δ_e, W_final − W_0)`` for every epoch (at that epoch's step)
      and ``path_efficiency = ‖W_final − W_0‖ / Σ_t ‖W_{t+1} − W_t‖`` (1 = a straight line).

    Memory: per group, copies of the start, the last step and the last epoch weights plus one update per
    epoch (``epochs + 3`` copies, on the CPU except the last-step copy). With ``projection=k`` every copy is
    replaced by a seeded count sketch of ``k`` numbers (cosines and norms within about ``sqrt(2/k)``
    relative error; the sketch tables cost 5 bytes per weight) — for large models. Under DDP the weights
    are the same on every rank, so only rank zero computes and logs. The state survives resume.

    Args:
        modules: dotted names of the modules to track, relative to the probed network.
        module: attribute path of the network in the LightningModule (default ``student`` if present).
        every_n_steps: how often (optimizer steps) to measure the step length.
        projection: sketch size ``k`` instead of full copies (None: exact).
        seed: seed of the sketch.

    Logged metrics (``<m>`` = the module name; step = ``trainer.global_step``):
        ``kd_probe/weights/<m>/step_length``, ``kd_probe/weights/<m>/distance``,
        ``kd_probe/weights/<m>/update_cosine``, ``kd_probe/weights/<m>/direction_consistency``,
        ``kd_probe/weights/<m>/final_alignment``, ``kd_probe/weights/<m>/path_efficiency``; with a
        ``TensorBoardLogger`` also the run's Custom Scalars layout and HParams (:class:`ProbeCallback`).

    Example::

        trainer = pl.Trainer(max_epochs=10, callbacks=[WeightTrajectoryMonitor()])
    """

    def __init__(
        self,
        modules: list[str] | None = None,
        module: str | None = None,
        every_n_steps: int = 1,
        projection: int | None = None,
        seed: int = 0,
    ) -> None:
        if modules is not None and (isinstance(modules, str) or not all(isinstance(m, str) and m for m in modules)):
            raise ValueError(f"`modules` must be a list of dotted module names, got {modules!r}.")
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be an integer ≥ 1, got {every_n_steps!r}.")
        if projection is not None and (not isinstance(projection, int) or projection < 1):
            raise ValueError(f"`projection` must be None or a sketch size ≥ 1, got {projection!r}.")
        self.modules, self.module_path, self.every_n_steps = modules, module, every_n_steps
        self.projection, self.seed = projection, seed
        self._groups: dict[str, list[nn.Parameter]] = {}
        self._sketches: dict[str, CountSketch] = {}
        self._tracks: dict[str, _Track] = {}
        self._restored: dict[str, Any] = {}
        self._last_step = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(modules=self.modules, module=self.module_path)

    @override
    def check_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = find_network(pl_module, self.module_path)
        if self.modules is None:
            names = [name for name, child in network.named_children() if any(True for _ in child.parameters())]
        else:
            names = list(self.modules)
            for name in names:
                resolve_layer(network, name, argument="modules")
        if not names:
            raise ValueError(f"{type(network).__name__} has no child module with parameters to track.")
        self._groups = {name: list(network.get_submodule(name).parameters()) for name in names}

    def _vector(self, name: str) -> Tensor:
        flat = torch.cat([p.detach().flatten() for p in self._groups[name]])
        if self.projection is None:
            return flat.clone()
        if name not in self._sketches:
            self._sketches[name] = CountSketch(flat.numel(), self.projection, self.seed, flat.device)
        return self._sketches[name](flat)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False):
            return
        for name in self._groups:
            current = self._vector(name)
            state = self._restored.get(name)
            self._tracks[name] = _Track.restore(state, current) if state else _Track(current)
            if not state:
                self._tracks[name].start = current.cpu()
                self._tracks[name].epoch = current.cpu()
        self._last_step = trainer.global_step

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self._tracks or step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        metrics = {}
        for name, track in self._tracks.items():
            current = self._vector(name)
            length = float(torch.linalg.vector_norm((current - track.step).double()))
            track.path += length
            track.step = current
            metrics[f"kd_probe/weights/{name}/step_length"] = length / track.start_norm
        _log(trainer, metrics)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {}
        for name, track in self._tracks.items():
            current = self._vector(name).cpu()
            update = current - track.epoch
            displacement = current - track.start
            tag = f"kd_probe/weights/{name}"
            metrics[f"{tag}/distance"] = track.path / track.start_norm
            if track.updates:
                metrics[f"{tag}/update_cosine"] = cosine(update, track.updates[-1])
            metrics[f"{tag}/direction_consistency"] = cosine(update, displacement)
            track.updates.append(update)
            track.update_steps.append(trainer.global_step)
            track.epoch = current
        _log(trainer, metrics)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # the HParams metrics
        for name, track in self._tracks.items():
            final = self._vector(name).cpu() - track.start
            tag = f"kd_probe/weights/{name}"
            for update, step in zip(track.updates, track.update_steps, strict=True):
                _log(trainer, {f"{tag}/final_alignment": cosine(update, final)}, step)
            efficiency = path_efficiency(float(torch.linalg.vector_norm(final.double())), track.path)
            _log(trainer, {f"{tag}/path_efficiency": efficiency})

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per tracked module: path efficiency, the per-epoch cosines and the normalised distance so far."""
        result = {}
        for name, track in self._tracks.items():
            final = track.epoch - track.start
            result[name] = {
                "path_efficiency": path_efficiency(float(torch.linalg.vector_norm(final.double())), track.path),
                "distance": track.path / track.start_norm,
                "final_alignment": [cosine(update, final) for update in track.updates],
                "update_cosine": [cosine(b, a) for a, b in zip(track.updates, track.updates[1:], strict=False)],
            }
        return result

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"tracks": {name: track.state() for name, track in self._tracks.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict.get("tracks", {}))


def _norm(vector: Tensor) -> float:
    return max(float(torch.linalg.vector_norm(vector.double())), 1e-30)


def _log(trainer: pl.Trainer, metrics: dict[str, float], step: int | None = None) -> None:
    finite = {key: value for key, value in metrics.items() if math.isfinite(value)}
    if finite:
        for logger in trainer.loggers:
            logger.log_metrics(finite, step=trainer.global_step if step is None else step)
