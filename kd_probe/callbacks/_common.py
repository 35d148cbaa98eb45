"""What the probe callbacks share: reading a probe set, schedules, finding the network, gathering shards."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import Dataset
from typing_extensions import override

from kd_probe._paths import write_atomically
from kd_probe.callbacks._guard import CostGuard, SideEffects, failure_reason, stop_check
from kd_probe.callbacks._precision import check_precision, float32_probe
from kd_probe.callbacks._probe_sources import ProbeFile, open_probe_source
from kd_probe.callbacks._tensorboard import ProbeCallback
from kd_probe.core.layers import unwrap_compiled
from kd_probe.core.render import per_image_unit

__all__ = [
    "PAPER_EPOCHS",
    "BatchProbe",
    "ProbeSchedule",
    "find_network",
    "gather_shards",
    "networks_by_role",
    "probe_normalization",
    "probe_pictures",
    "read_probe_set",
    "run_folder",
    "save_atomically",
    "shard_indices",
]

PAPER_EPOCHS = (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 70, 90, 110, 130, 150)  # [KP]'s probed checkpoints


def read_probe_set(
    images: Any,
    masks: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    need_masks: bool = True,
    need_labels: bool = False,
    owner: str | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Images ``[N, C, H, W]``, masks ``[N, H, W]`` (bool) and labels ``[N]`` from tensors, a dataset of
    ``(image, label, mask)`` triples, a data module with a ``probe_set`` (the built-in ``ShapesDataModule``), or a
    :class:`ProbeFile` or its path; checked now, so a mistake is reported at construction, not hours into
    training. ``owner`` (a probe that measures images only) refuses token sequences and point clouds in one
    sentence."""
    images = open_probe_source(images)
    if isinstance(images, ProbeFile):
        images, masks, labels = images.parts(masks, labels)
    if owner is not None and getattr(images, "units", None) is not None and not isinstance(images, Tensor):
        _refuse_modality(owner, f"{type(images).__name__} ({images.units.kind})")
    if hasattr(images, "probe_set") and not isinstance(images, Tensor):
        images = images.probe_set
    if isinstance(images, Dataset):
        if masks is not None:
            raise ValueError("`masks` must be None when `images` is a dataset: the masks are read from its items.")
        items = [images[i] for i in range(len(images))]  # type: ignore[arg-type]
        if items and (not isinstance(items[0], (tuple, list)) or len(items[0]) < (3 if need_masks else 2)):
            raise ValueError(
                f"`images` is a {type(images).__name__} whose items are not (image, label, mask) triples; "
                f"got items of {len(items[0]) if isinstance(items[0], (tuple, list)) else 1} value(s) without a mask."
            )
        if not items:
            raise ValueError("`images` is an empty dataset; the probe needs at least one image.")
        labels = torch.as_tensor([int(item[1]) for item in items])
        masks = torch.stack([torch.as_tensor(item[2]) for item in items]) if len(items[0]) > 2 else None
        images = torch.stack([torch.as_tensor(item[0]) for item in items])
    if not isinstance(images, Tensor):
        raise ValueError(
            f"`images` must be a tensor [N, C, H, W], a dataset of (image, label, mask) or a data "
            f"module with a probe_set, got {type(images).__name__}."
        )
    if owner is not None and ((images.dim() == 2 and not images.is_floating_point()) or images.dim() == 3):
        _refuse_modality(
            owner, f"inputs of shape {tuple(images.shape)} ({'tokens' if images.dim() == 2 else 'points'}?)"
        )
    if images.dim() != 4 or not images.is_floating_point():
        hint = (
            " (0..255 pixels? convert them with `images.float() / 255`, then normalise as the model expects)"
            if images.dtype == torch.uint8
            else ""
        )
        raise ValueError(
            f"`images` must be a 4-D float tensor [N, C, H, W], got {images.dim()}-D {images.dtype} of shape "
            f"{tuple(images.shape)}{hint}."
        )
    if images.shape[0] == 0:
        raise ValueError(f"`images` is empty (shape {tuple(images.shape)}); the probe needs at least one image.")
    if not torch.isfinite(images).all():
        bad = int((~torch.isfinite(images)).flatten(1).any(dim=1).sum())
        raise ValueError(
            f"`images` of shape {tuple(images.shape)} contains NaN or infinite values (in {bad} of "
            f"{images.shape[0]} images)."
        )
    if masks is None and need_masks:
        raise ValueError(
            "`masks` are required (foreground masks [N, H, W] tell foreground from background units), got None."
        )
    if masks is not None:
        masks = torch.as_tensor(masks)
        if masks.dim() == 4 and masks.shape[1] == 1:
            masks = masks[:, 0]
        if masks.dim() != 3 or masks.shape[0] != images.shape[0] or masks.shape[1:] != images.shape[2:]:
            raise ValueError(
                f"`masks` of shape {tuple(masks.shape)} do not match `images` of shape "
                f"{tuple(images.shape)}: one [H, W] mask per image is expected."
            )
        masks = (masks > 0).clone()
    if labels is not None or need_labels:
        shape = None if labels is None else tuple(torch.as_tensor(labels).shape)
        if shape != (images.shape[0],):
            raise ValueError(f"`labels` must hold one class per image, shape ({images.shape[0]},), got {shape}.")
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"`labels` must be integer classes, got {labels.dtype} values {labels[:4].tolist()}.")
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"`labels` must be classes ≥ 0, got {int(labels.min())}.")
        labels = labels.long().clone()
    return images.detach().clone(), masks, labels


class ProbeSchedule:
    """The epochs after which to probe: 0 is before the first optimizer step; ``e`` is after ``e`` epochs.

    ``epochs``: a list of epochs, or ``"paper"`` ([KP]'s 0, 2, 5, …, 150 scaled to ``max_epochs``);
    ``every_n_epochs``: every n epochs (and 0). Neither: every epoch. With ``max_steps`` and no ``max_epochs``
    a list or ``every_n_epochs`` works (a last, partial epoch counts as an epoch); ``"paper"`` is refused.
    """

    def __init__(self, epochs: Sequence[int] | str | None, every_n_epochs: int | None) -> None:
        if epochs is not None and every_n_epochs is not None:
            raise ValueError("Give `epochs` or `every_n_epochs`, not both.")
        if isinstance(epochs, str) and epochs != "paper":
            raise ValueError(f"`epochs` must be a list of epochs or 'paper', got {epochs!r}.")
        if epochs is not None and not isinstance(epochs, str):
            epochs = list(epochs)
            if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in epochs):
                raise ValueError(f"`epochs` must hold non-negative integers, got {epochs!r}.")
        if every_n_epochs is not None and not (isinstance(every_n_epochs, int) and every_n_epochs >= 1):
            raise ValueError(f"`every_n_epochs` must be an integer ≥ 1, got {every_n_epochs!r}.")
        self.epochs, self.every_n_epochs = epochs, every_n_epochs

    def resolve(self, max_epochs: int | None) -> list[int]:
        """The sorted epochs to probe for a run of ``max_epochs`` (needed for ``"paper"``)."""
        if self.epochs == "paper":
            if max_epochs is None or max_epochs < 1:
                raise ValueError(
                    f"`epochs='paper'` scales the paper's checkpoints to the run's length in epochs and needs "
                    f"Trainer(max_epochs=...) ≥ 1, got max_epochs={max_epochs!r} (a run bounded by `max_steps` "
                    "alone has no length in epochs: give `epochs=[...]` or `every_n_epochs` instead)."
                )
            return sorted({min(max_epochs, round(e * max_epochs / 150)) for e in PAPER_EPOCHS})
        if isinstance(self.epochs, list):
            return sorted(set(self.epochs))
        step = self.every_n_epochs or 1
        last = max_epochs if max_epochs is not None and max_epochs >= 0 else 10**9
        return [0, *range(step, last + 1, step)] if last < 10**9 else [0]

    def includes(self, epoch: int, max_epochs: int | None) -> bool:
        if self.epochs is None and (max_epochs is None or max_epochs < 0):
            return epoch % (self.every_n_epochs or 1) == 0
        return epoch in self.resolve(max_epochs)


def find_network(pl_module: pl.LightningModule, path: str | None) -> nn.Module:
    """The network to probe: ``pl_module.<path>`` (dotted attributes), default ``student`` when the module
    has one (``DistillationModule``), else the LightningModule itself."""
    if path is None:
        student = getattr(pl_module, "student", None)
        return unwrap_compiled(student) if isinstance(student, nn.Module) else pl_module
    target: Any = pl_module
    for part in path.split("."):
        if not hasattr(target, part):
            children = sorted(name for name, _ in pl_module.named_children())
            raise ValueError(
                f"`module`={path!r} is not an attribute path of {type(pl_module).__name__}; "
                f"its child modules are {children}."
            )
        target = getattr(target, part)
    if not isinstance(target, nn.Module):
        raise ValueError(f"`module`={path!r} is a {type(target).__name__}, not an nn.Module.")
    return unwrap_compiled(target)


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """The probe images a rank works on: ``rank, rank + world_size, …``."""
    return list(range(rank, count, world_size))


def gather_shards(trainer: pl.Trainer, local: Tensor, count: int) -> Tensor:
    """Reassemble per-rank results (rank ``r`` holds images ``r::world_size``) into ``[count, ...]`` on every
    rank. Every rank must call this (it is a collective)."""
    world = trainer.world_size
    if world == 1:
        return local
    width = math.ceil(count / world)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local
    gathered = trainer.strategy.all_gather(padded)  # [world, width, ...]
    result = local.new_empty((count, *local.shape[1:]))
    for rank in range(world):
        shard = shard_indices(count, rank, world)
        result[shard] = gathered[rank, : len(shard)].to(result.dtype)
    return result


def networks_by_role(pl_module: pl.LightningModule, **roles: str | nn.Module) -> list[nn.Module]:
    """The networks a probe compares, e.g. ``teacher="teacher", student="student"``: each given as a module, or
    as the name of a module attribute of the LightningModule (the error lists its child modules)."""
    found = []
    for role, value in roles.items():
        if isinstance(value, nn.Module):
            found.append(unwrap_compiled(value))
            continue
        network = getattr(pl_module, value, None)
        if not isinstance(network, nn.Module):
            children = sorted(name for name, _ in pl_module.named_children())
            raise ValueError(
                f"`{role}`={value!r} is not a module attribute of {type(pl_module).__name__}; "
                f"its child modules are {children}."
            )
        found.append(unwrap_compiled(network))
    return found


def probe_normalization(
    source: Any, normalization: tuple[Sequence[float], Sequence[float]] | None, channels: int
) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` ``[1, C, 1, 1]`` of the probe images: given, else the data module's (or the
    :class:`ProbeFile`'s) ``mean``/``std``, else none (0 and 1) — to show the images as pictures and to express
    pixel-unit budgets."""
    stats = (getattr(source, "mean", None), getattr(source, "std", None))
    if normalization is None and stats[0] is not None and stats[1] is not None and not isinstance(source, Tensor):
        normalization = (stats[0], stats[1])
    mean, std = normalization if normalization is not None else ([0.0] * channels, [1.0] * channels)
    return torch.as_tensor(mean).float().view(1, -1, 1, 1), torch.as_tensor(std).float().view(1, -1, 1, 1)


def probe_pictures(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Probe images ``[N, C, H, W]`` back in [0, 1] pixel units for display (``images · std + mean``; per-image
    min–max when the normalisation does not fit the channels). Any ``C``: the grids show them with ``as_rgb``."""
    images = images.detach().float().cpu()
    if mean.shape[1] in (1, images.shape[1]) and std.shape[1] in (1, images.shape[1]):
        return (images * std + mean).clamp(0, 1)
    return per_image_unit(images)


def _refuse_modality(owner: str, given: str) -> None:
    raise ValueError(
        f"{owner} measures images [N, C, H, W] only (Grad-CAM and UniCAM maps need a spatial layer), got {given}; "
        "for token sequences and point clouds use KnowledgePointProbe with units=Tokens(...) or Points()."
    )


def run_folder(trainer: pl.Trainer) -> Path:
    """Where a probe's files go: the first logger's directory, else the Trainer's root directory."""
    folder = next((lg.log_dir for lg in trainer.loggers if getattr(lg, "log_dir", None)), None)
    return Path(folder or trainer.default_root_dir)


def save_atomically(record: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: torch.save(record, temporary))


class BatchProbe(ProbeCallback):
    """What the probes of one fixed held-out batch share (``AgreementProbe``, ``UniCAMProbe``): probe at epoch 0
    (before any optimizer step) and after every ``every_n_epochs`` epochs, on rank zero only (no collectives),
    never during sanity checking or ``fast_dev_run``, never twice for one epoch (so a resumed run goes on where
    it stopped). A probe is computed first (:meth:`measure`), then recorded as exactly one history entry
    (failed, with the reason, when computing raised), then published (:meth:`publish`: scalars, images, files),
    each side effect in its own guard: a probe problem never stops training. At the start of fit a dry run
    (:meth:`estimate_cost`) says what a probe costs, and after the first epoch which share of an epoch. Probes
    compute in float32 with autocast off (a mixed-precision Trainer is noted once; a Trainer whose weights are
    not float32, ``precision="bf16-true"``, is refused at the start of fit)."""

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

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> tuple[dict[str, Any], Any]:
        """Compute one probe without side effects: the history entry, and what :meth:`publish` shows."""
        raise NotImplementedError

    def publish(self, trainer: pl.Trainer, entry: dict[str, Any], shown: Any) -> None:
        """Log and save a recorded entry (``shown`` is ``None`` for a failed one), every side effect guarded
        with ``self.side_effects.run``."""

    def estimate_cost(self, pl_module: pl.LightningModule) -> tuple[float, str]:
        """Seconds one probe is expected to take (from a tiny dry run), and what that covers."""
        raise NotImplementedError

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> dict[str, Any]:
        """Probe now on this process: compute, append exactly one history entry, publish it."""
        shown = None
        try:
            with float32_probe():  # autocast off: the probe's numbers do not depend on the training precision
                entry, shown = self.cost.timed(lambda: self.measure(trainer, pl_module, epoch))
        except Exception as error:  # a probe problem never stops training nor loses the history
            reason = failure_reason(error)
            rank_zero_warn(f"kd_probe: the {self.description} at epoch {epoch} failed ({reason}); training continues.")
            entry = {"epoch": epoch, "global_step": trainer.global_step, "failed": reason}
        self.history.append(entry)
        self.publish(trainer, entry, shown)
        return entry

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check_precision(trainer, self.side_effects.owner)  # every rank: a refused precision stops them all
        if trainer.is_global_zero and not getattr(trainer, "fast_dev_run", False):
            with float32_probe():
                self.side_effects.run(
                    None, "estimating the cost", lambda: self.cost.expect(*self.estimate_cost(pl_module))
                )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False) or not trainer.is_global_zero:
            return
        if epoch % self.every_n_epochs or any(entry["epoch"] == epoch for entry in self.history):
            return
        stop_check(trainer)()  # SIGTERM received: let Lightning shut down rather than start a probe
        self.probe(trainer, pl_module, epoch)
