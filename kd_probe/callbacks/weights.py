"""``WeightTrajectoryMonitor``: how straight and how steady the weights travel (methods §1.6)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from kd_probe.callbacks._base import ProbeCallback
from kd_probe.callbacks._common import find_network
from kd_probe.callbacks._guard import SideEffects
from kd_probe.callbacks._precision import check_precision
from kd_probe.core.dynamics import CountSketch, cosine, path_efficiency
from kd_probe.core.layers import resolve_layer
from kd_probe.io.tags import WEIGHTS, tag

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

    def state(self, size: int) -> dict[str, Any]:
        return {
            "size": size,  # how many weights the group has: a resume with another parameter set starts afresh
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

    Only the parameters that require gradients at setup for fit are tracked (a frozen parameter never moves,
    it would only shrink the normalised lengths): a group with no trainable parameter (a frozen backbone or a
    frozen teacher-like child) is skipped, and what was skipped is said once at setup (a warning when a module
    named in ``modules`` is skipped whole, else an info line). Nothing left to track is a ``ValueError``.

    Memory: per group, copies of the start, the last step and the last epoch weights plus one update per
    epoch (``epochs + 3`` copies, on the CPU except the last-step copy). With ``projection=k`` every copy is
    replaced by a seeded count sketch of ``k`` numbers (cosines and norms within about ``sqrt(2/k)``
    relative error; the sketch tables cost 5 bytes per weight) — for large models. Under DDP the weights
    are the same on every rank, so only rank zero computes and logs. The state survives resume. A logger
    that raises is warned about once and training goes on (the monitor's state is kept). A Trainer whose
    weights are not float32 (``precision="bf16-true"``) is refused at the start of fit, as by the other probes.

    Args:
        modules: dotted names of the modules to track, relative to the probed network.
        module: attribute path of the network in the LightningModule (default ``student`` if present).
        every_n_steps: how often (optimizer steps) to measure the step length.
        projection: sketch size ``k`` instead of full copies (None: exact).
        seed: seed of the sketch.
        include_frozen: also track the parameters that do not require gradients, as the monitor did before
            (frozen weights then count in ``‖W_0‖`` and shrink the normalised lengths).

    Logged metrics (``<m>`` = the module name; step = ``trainer.global_step``):
        ``6_weights/<m>/step_length``, ``6_weights/<m>/distance``,
        ``6_weights/<m>/update_cosine``, ``6_weights/<m>/direction_consistency``,
        ``6_weights/<m>/final_alignment``, ``6_weights/<m>/path_efficiency`` — for the tracked
        modules only (none for a skipped one); with a ``TensorBoardLogger`` also the run's Custom Scalars
        layout and HParams (:class:`ProbeCallback`).

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
        include_frozen: bool = False,
    ) -> None:
        if modules is not None and (isinstance(modules, str) or not all(isinstance(m, str) and m for m in modules)):
            raise ValueError(f"`modules` must be a list of dotted module names, got {modules!r}.")
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be an integer ≥ 1, got {every_n_steps!r}.")
        if projection is not None and (not isinstance(projection, int) or projection < 1):
            raise ValueError(f"`projection` must be None or a sketch size ≥ 1, got {projection!r}.")
        if not isinstance(include_frozen, bool):
            raise ValueError(f"`include_frozen` must be True or False, got {include_frozen!r}.")
        self.modules, self.module_path, self.every_n_steps = modules, module, every_n_steps
        self.projection, self.seed, self.include_frozen = projection, seed, include_frozen
        self.side_effects = SideEffects(type(self).__name__)
        self._groups: dict[str, list[nn.Parameter]] = {}
        self._sketches: dict[str, CountSketch] = {}
        self._tracks: dict[str, _Track] = {}
        self._restored: dict[str, Any] = {}
        self._last_step = -1

    @property
    @override
    def state_key(self) -> str:
        frozen = {"include_frozen": True} if self.include_frozen else {}  # the default keeps the older key
        return self._generate_state_key(modules=self.modules, module=self.module_path, **frozen)

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
        groups = {name: list(network.get_submodule(name).parameters()) for name in names}
        if not self.include_frozen:
            groups = self._trainable(type(network).__name__, groups, dict(network.named_parameters()))
        self._groups = groups

    def _trainable(
        self, network: str, groups: dict[str, list[nn.Parameter]], named: dict[str, nn.Parameter]
    ) -> dict[str, list[nn.Parameter]]:
        """The groups' parameters that require gradients; what was skipped said once, nothing left refused."""
        names = {id(parameter): name for name, parameter in named.items()}
        kept: dict[str, list[nn.Parameter]] = {}
        skipped = []
        for group, parameters in groups.items():
            trainable = [p for p in parameters if p.requires_grad]
            frozen = [names.get(id(p), "?") for p in parameters if not p.requires_grad]
            if trainable:
                kept[group] = trainable
            if not trainable:
                skipped.append(f"{group!r} (all {len(parameters)} parameters frozen)")
            elif frozen:
                shown = ", ".join(frozen[:4]) + (f" and {len(frozen) - 4} more" if len(frozen) > 4 else "")
                skipped.append(f"{group!r} ({len(frozen)} of {len(parameters)} parameters frozen: {shown})")
        if not kept:
            raise ValueError(
                f"`modules`={self.modules!r}: every parameter of {network}'s {', '.join(map(repr, groups))} is frozen "
                "(requires_grad=False), so WeightTrajectoryMonitor has nothing to track; unfreeze one, name a "
                "trainable module in `modules` or pass `include_frozen=True`."
            )
        if skipped:
            say = rank_zero_info if self.modules is None or len(kept) == len(groups) else rank_zero_warn
            say(
                f"WeightTrajectoryMonitor: tracking only the parameters that require gradients "
                f"(include_frozen=False); skipped: {'; '.join(skipped)}."
            )
        return kept

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_precision(trainer, self.side_effects.owner)  # every rank: a refused precision stops them all

    def _vector(self, name: str) -> Tensor:
        flat = torch.cat([p.detach().flatten() for p in self._groups[name]])
        if self.projection is None:
            return flat.clone()
        if name not in self._sketches:
            self._sketches[name] = CountSketch(flat.numel(), self.projection, self.seed, flat.device)
        return self._sketches[name](flat)

    def _size(self, name: str) -> int:
        return sum(p.numel() for p in self._groups[name])

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(trainer, "fast_dev_run", False):
            return
        for name in self._groups:
            current = self._vector(name)
            state = self._restored.get(name)
            size, restored = self._size(name), _restored_size(state, self.projection) if state else None
            if state and restored not in (None, size):
                rank_zero_warn(
                    f"kd_probe: WeightTrajectoryMonitor: the checkpoint tracked {restored} weights of {name!r}, "
                    f"now {size} are tracked (`include_frozen`, frozen layers); its trajectory starts afresh."
                )
                state = None
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
            metrics[tag(WEIGHTS, None, f"{name}/step_length")] = length / track.start_norm
        self._log(trainer, metrics)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {}
        for name, track in self._tracks.items():
            current = self._vector(name).cpu()
            update = current - track.epoch
            displacement = current - track.start
            metrics[tag(WEIGHTS, None, f"{name}/distance")] = track.path / track.start_norm
            if track.updates:
                metrics[tag(WEIGHTS, None, f"{name}/update_cosine")] = cosine(update, track.updates[-1])
            metrics[tag(WEIGHTS, None, f"{name}/direction_consistency")] = cosine(update, displacement)
            track.updates.append(update)
            track.update_steps.append(trainer.global_step)
            track.epoch = current
        self._log(trainer, metrics)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, track in self._tracks.items():
            final = self._vector(name).cpu() - track.start
            for update, step in zip(track.updates, track.update_steps, strict=True):
                self._log(trainer, {tag(WEIGHTS, None, f"{name}/final_alignment"): cosine(update, final)}, step)
            efficiency = path_efficiency(float(torch.linalg.vector_norm(final.double())), track.path)
            self._log(trainer, {tag(WEIGHTS, None, f"{name}/path_efficiency"): efficiency})

    def _log(self, trainer: pl.Trainer, metrics: dict[str, float], step: int | None = None) -> None:
        """The finite values to every logger, each logger in its own guard (warned once, training goes on)."""
        finite = {key: value for key, value in metrics.items() if math.isfinite(value)}
        if not finite:
            return
        for logger in trainer.loggers:
            self.side_effects.run(
                None,
                f"logging scalars to {type(logger).__name__}",
                logger.log_metrics,
                finite,
                step=trainer.global_step if step is None else step,
            )

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
        return {"tracks": {name: track.state(self._size(name)) for name, track in self._tracks.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict.get("tracks", {}))


def _norm(vector: Tensor) -> float:
    return max(float(torch.linalg.vector_norm(vector.double())), 1e-30)


def _restored_size(state: dict[str, Any], projection: int | None) -> int | None:
    """How many weights a checkpoint's track covered (an older checkpoint: its exact start's length, or unknown)."""
    if "size" in state:
        return int(state["size"])
    return int(state["start"].numel()) if projection is None else None
