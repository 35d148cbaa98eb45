"""What ``KnowledgePointProbe`` needs to know about its input units (methods §1.1): the probe inputs and their
foreground units for images, token sequences and point clouds, and the TensorBoard media of each."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from kd_probe.callbacks._common import read_probe_set
from kd_probe.callbacks._probe_sources import ProbeFile, open_probe_source
from kd_probe.core.knowledge_points import downsample_mask, unit_foreground
from kd_probe.core.render import knowledge_point_panels, point_projections, token_strips
from kd_probe.core.units import ImageGrid, Points, Tokens, Units

__all__ = ["ProbeInputs", "describe_units", "log_probe_media", "log_unit_media", "read_probe_inputs"]


@dataclass
class ProbeInputs:
    """The probe set of a ``KnowledgePointProbe``.

    Attributes:
        inputs: images ``[N, C, H, W]``, token ids ``[N, T]`` or point clouds ``[N, P, 3]``.
        masks: what :func:`~kd_probe.count_knowledge_points` takes: image masks ``[N, H, W]`` or per-unit flags.
        foreground: ``[N, *units]`` bool foreground units.
        units: the unit type (``None``: images with the probe's ``grid``, the default).
        valid: ``[N, *units]`` bool, which positions are units (``None``: all).
        vocabulary: token strings by id, when the data module has them (for the token media).
    """

    inputs: Tensor
    masks: Tensor
    foreground: Tensor
    units: Units | None
    valid: Tensor | None
    vocabulary: tuple[str, ...] | None = None


def read_probe_inputs(images: Any, masks: Tensor | None, options: dict[str, Any]) -> ProbeInputs:
    """The probe inputs and foreground of ``images`` (a tensor, a dataset of ``(input, label, foreground)``, a
    data module with a ``probe_set``, or a ``ProbeFile``). The unit type is ``options["units"]``, else the data
    module's ``units`` attribute, else images with ``options["grid"]``; checked now, so a mistake is reported at
    construction."""
    units = options.get("units")
    if units is None and not isinstance(images, (Tensor, Dataset)):
        units = getattr(images, "units", None)
    vocabulary = getattr(images, "vocabulary", None)
    if units is not None and not isinstance(units, Units):
        raise ValueError(f"`units` must be ImageGrid(...), Tokens(...) or Points(...), got {units!r}.")
    if units is None or isinstance(units, ImageGrid):
        if units is not None and "grid" in options:
            raise ValueError(f"`grid`={options['grid']!r} and `units`={units!r} both given; give the grid once.")
        grid = units.grid if units is not None else int(options.get("grid", 16))
        inputs, image_masks, _ = read_probe_set(images, masks)
        assert image_masks is not None  # read_probe_set requires masks here
        if not 1 <= grid <= min(inputs.shape[-2:]):
            raise ValueError(
                f"`grid`={grid} must be between 1 and the probe images' size {inputs.shape[-2]}×{inputs.shape[-1]}."
            )
        foreground = downsample_mask(image_masks, grid)
        _warn_uninformative(foreground, None, f"on the {grid}×{grid} unit grid", "images")
        return ProbeInputs(inputs, image_masks, foreground, units, None)
    inputs, flags = _read_unit_set(images, masks, units)
    valid = units.valid(inputs)
    foreground = unit_foreground(flags, units.unit_shape(inputs), argument="masks")
    if valid is not None:
        foreground = foreground & valid
    noun = "point clouds" if isinstance(units, Points) else "sequences"
    _warn_uninformative(foreground, valid, f"among its {units.kind}", noun)
    return ProbeInputs(inputs, foreground, foreground, units, valid, tuple(vocabulary) if vocabulary else None)


def _read_unit_set(images: Any, masks: Tensor | None, units: Units) -> tuple[Tensor, Tensor]:
    what = "point clouds [N, P, 3]" if isinstance(units, Points) else "token ids [N, T]"
    images = open_probe_source(images)
    if isinstance(images, ProbeFile):
        images, masks, _ = images.parts(masks, None)
    if hasattr(images, "probe_set") and not isinstance(images, Tensor):
        images = images.probe_set
    if isinstance(images, Dataset):
        if masks is not None:
            raise ValueError("`masks` must be None when `images` is a dataset: the flags are read from its items.")
        items = [images[i] for i in range(len(images))]  # type: ignore[arg-type]
        if not items:
            raise ValueError("`images` is an empty dataset; the probe needs at least one input.")
        if not isinstance(items[0], (tuple, list)) or len(items[0]) < 3:
            raise ValueError(
                f"`images` is a {type(images).__name__} whose items are not (input, label, foreground) triples."
            )
        images = torch.stack([torch.as_tensor(item[0]) for item in items])
        masks = torch.stack([torch.as_tensor(item[2]) for item in items])
    if not isinstance(images, Tensor):
        raise ValueError(f"`images` must be {what}, a dataset or a data module with a probe_set, got {images!r}.")
    inputs = units.check_inputs(images)
    if inputs.shape[0] == 0:
        raise ValueError(f"`images` is empty (shape {tuple(inputs.shape)}); the probe needs at least one input.")
    if masks is None:
        raise ValueError(f"`masks` are required: per-unit foreground flags {_flags_shape(units, inputs)}, got None.")
    flags = torch.as_tensor(masks)
    expected = (inputs.shape[0], *units.unit_shape(inputs))
    if tuple(flags.shape) != expected:
        raise ValueError(
            f"`masks` of shape {tuple(flags.shape)} do not match the {what.split(' [')[0]} of shape "
            f"{tuple(inputs.shape)}: per-unit foreground flags {_flags_shape(units, inputs)} are expected."
        )
    return inputs, flags > 0


def _flags_shape(units: Units, inputs: Tensor) -> str:
    return f"[{inputs.shape[0]}, {units.unit_shape(inputs)[0]}]"


def _warn_uninformative(foreground: Tensor, valid: Tensor | None, where: str, noun: str) -> None:
    """Warn when some probe inputs are all foreground or all background: they have no background baseline, or
    can hold no foreground point, so ``fg_ratio`` says nothing about them."""
    flat = foreground.flatten(1)
    real = torch.ones_like(flat) if valid is None else valid.flatten(1)
    full, empty = (flat | ~real).all(dim=1), ~flat.any(dim=1)
    for flags, what in ((full, "all foreground"), (empty, "all background")):
        if flags.any():
            which = flags.nonzero().flatten().tolist()
            warnings.warn(
                f"kd_probe: `masks` of {len(which)} of {foreground.shape[0]} probe {noun} (indices {which[:8]}) are "
                f"{what} {where}; fg_ratio is meaningless for them (check the masks' polarity and that they match "
                "the inputs).",
                UserWarning,
                stacklevel=4,
            )


def describe_units(units: Units | None) -> str | None:
    """The unit type as recorded in settings and history files (plain text, so they load with
    ``weights_only=True``); ``None`` for the default image grid."""
    return None if units is None else repr(units)


def log_probe_media(
    writer: Any, prefix: str, probe: ProbeInputs, entry: dict[str, Any], log_images: int, step: int
) -> None:
    """A knowledge-point probe's TensorBoard media of one entry: the histogram of ``H̄ − H_i`` over the effective
    images' units (``<prefix>/entropy_gap``) and the first ``log_images`` inputs' pictures."""
    gap = (entry["baseline"] - entry["entropy"][entry["effective"]]).flatten()
    gap = gap[~gap.isnan()]  # NaN: positions that are not units (padding tokens)
    if gap.numel() and torch.isfinite(gap).all():
        writer.add_histogram(f"{prefix}/entropy_gap", gap, global_step=step)
    shown = min(log_images, probe.inputs.shape[0])
    if shown:
        log_unit_media(writer, f"{prefix}/maps", probe, entry, shown, step)
    writer.flush()


def log_unit_media(writer: Any, tag: str, probe: ProbeInputs, entry: dict[str, Any], shown: int, step: int) -> None:
    """The per-modality pictures of one probe: image panels, token strips (and the tokens as text), or point
    clouds (a 2-D projection image and a coloured mesh)."""
    inputs, entropy, points = probe.inputs[:shown], entry["entropy"][:shown], entry["points"][:shown]
    foreground = probe.foreground[:shown]
    if probe.units is None or isinstance(probe.units, ImageGrid):
        writer.add_image(tag, knowledge_point_panels(inputs, entropy, points, probe.masks[:shown]), global_step=step)
    elif isinstance(probe.units, Tokens):
        writer.add_image(tag, token_strips(entropy, points, foreground), global_step=step)
        writer.add_text(tag, _token_text(inputs, entropy, points, foreground, probe), global_step=step)
    else:
        xyz = inputs.transpose(1, 2) if probe.units.channels_first else inputs  # type: ignore[attr-defined]
        writer.add_image(tag, point_projections(xyz, entropy, points, foreground), global_step=step)
        colours = torch.where(
            points[..., None],
            torch.tensor([255, 30, 30]),
            torch.where(foreground[..., None], torch.tensor([40, 200, 60]), torch.tensor([120, 120, 120])),
        ).to(torch.uint8)
        writer.add_mesh(f"{tag}_points", vertices=xyz[..., :3].float().cpu(), colors=colours, global_step=step)


def _token_text(inputs: Tensor, entropy: Tensor, points: Tensor, foreground: Tensor, probe: ProbeInputs) -> str:
    """Markdown: one line per sequence, knowledge points in **bold**, foreground tokens _underlined_ (italic),
    each token with its entropy."""
    lines = []
    for row in range(inputs.shape[0]):
        words = []
        for position, token in enumerate(inputs[row].tolist()):
            if probe.valid is not None and not bool(probe.valid[row, position]):
                continue
            word = probe.vocabulary[token] if probe.vocabulary and 0 <= token < len(probe.vocabulary) else str(token)
            word = f"{word}({float(entropy[row, position]):.2f})"
            if bool(foreground[row, position]):
                word = f"_{word}_"
            if bool(points[row, position]):
                word = f"**{word}**"
            words.append(word)
        lines.append(" ".join(words))
    return "  \n".join(lines)
