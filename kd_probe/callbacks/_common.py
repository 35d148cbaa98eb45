"""What the probe callbacks share: reading a probe set, schedules, finding the network, gathering shards."""

from __future__ import annotations

import hashlib
import math
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import Dataset

from kd_probe.callbacks._checks import check_mean_std
from kd_probe.callbacks._probe_sources import ProbeFile, open_probe_source
from kd_probe.core.layers import unwrap_compiled
from kd_probe.core.render import per_image_unit
from kd_probe.io.paths import write_atomically

__all__ = [
    "check_same_settings",
    "find_network",
    "gather_shards",
    "network_names",
    "networks_by_role",
    "probe_fingerprint",
    "probe_normalization",
    "probe_pictures",
    "read_probe_set",
    "run_folder",
    "save_atomically",
    "shard_indices",
]


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
    rank (booleans sent as bytes). Every rank must call this (it is a collective)."""
    world = trainer.world_size
    if world == 1:
        return local
    width = math.ceil(count / world)
    sent = local.to(torch.uint8) if local.dtype == torch.bool else local
    padded = sent.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = sent
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
    pixel-unit budgets. The source's are checked as strictly as ``normalization`` (both or neither, 1 or
    ``channels`` finite numbers each, ``std > 0``); a method called ``mean``/``std`` is no statistic."""
    mean, std = (getattr(source, key, None) for key in ("mean", "std"))
    mean, std = (None if callable(value) or isinstance(source, Tensor) else value for value in (mean, std))
    if normalization is not None:
        mean, std = normalization
    elif mean is None and std is None:
        mean, std = [0.0] * channels, [1.0] * channels
    else:
        check_mean_std(mean, std, channels, f"`images` (a {type(source).__name__})")
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
    """Where a probe's files go: the first logger's directory, else the Trainer's ``default_root_dir`` (which
    Lightning sets to the current folder unless told), said once per Trainer — a warning when that is the current
    folder, so that files never land there without a word."""
    folder = next((lg.log_dir for lg in trainer.loggers if getattr(lg, "log_dir", None)), None)
    if folder is not None:
        return Path(folder)
    root = Path(trainer.default_root_dir)
    if trainer not in _TOLD_WHERE:
        _TOLD_WHERE.add(trainer)
        said = (
            f"kd_probe: the Trainer has no logger with a folder (logger=False, or loggers without a `log_dir`), so "
            f"the probes write their files to its `default_root_dir`, {root.absolute()}"
        )
        if root.absolute() == Path.cwd().absolute():
            rank_zero_warn(f"{said}, the current folder; pass `default_root_dir=` or a logger to choose another.")
        else:
            rank_zero_info(f"{said}.")
    return root


_TOLD_WHERE: weakref.WeakSet[pl.Trainer] = weakref.WeakSet()  # the Trainers whose probes said where files go


def save_atomically(record: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: torch.save(record, temporary))


def probe_fingerprint(*tensors: Tensor | None) -> str:
    """A short hash of a probe set's tensors (shapes, types and values): two runs probed on the same items have
    the same one, recorded so that resuming or comparing runs can tell.

    Example::

        >>> probe_fingerprint(torch.zeros(2, 3)) == probe_fingerprint(torch.zeros(2, 3)) != probe_fingerprint(torch.ones(2, 3))
        True
    """
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none;")
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{tuple(tensor.shape)}{tensor.dtype};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def network_names(*networks: str | nn.Module | None) -> list[str | None]:
    """How a probe's settings record its networks: a role's name as given, a module given directly by its class."""
    return [n if n is None or isinstance(n, str) else type(n).__name__ for n in networks]


def check_same_settings(owner: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a probe whose settings changed since its checkpoint (the history would mix two
    measurements): a ``ValueError`` naming the first setting that differs and both values."""
    for key in sorted(set(saved) | set(current)):
        before, now = saved.get(key, "not set"), current.get(key, "not set")
        if before != now:
            raise ValueError(
                f"{owner}: the checkpoint's history was probed with {key}={before!r}, this probe has {key}={now!r}; "
                "resume with the same settings, or give this probe another `name` to start a new history."
            )
