"""Input units of the σ engine (methods §1.1): what one σ value perturbs. Pure torch.

A unit type says how σ maps onto the input and which units there are; the engine, the recurrence and the
fixed-entropy selection are the same for all of them (:func:`~kd_probe.estimate_sigma_maps`).

- :class:`ImageGrid`: images ``[N, C, H, W]``, σ per cell of a ``grid × grid`` partition, shared over channels.
- :class:`Tokens`: token ids ``[N, T]``, σ per token, shared over the embedding dimensions; the noise is added
  to the output of a named embedding module (a forward hook for the duration of a forward, removed in
  ``finally``). Padding tokens (``pad_id``) are not units: they get no noise and no σ (NaN in the maps).
- :class:`Points`: point clouds ``[N, P, D]`` (or ``[N, D, P]`` with ``channels_first=True``), σ per point,
  shared over its coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_probe.core.layers import resolve_layer

__all__ = ["ImageGrid", "Points", "Tokens", "Units", "upsample_units"]

FeatureOf = Callable[[Tensor], Tensor]  # inputs ↦ g(inputs) (the feature function of the engine)


def upsample_units(sigma: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-upsample unit maps ``[..., grid, grid]`` to pixels ``[..., 1, H, W]`` (methods §1.1).

    Pixel ``(y, x)`` belongs to unit ``(⌊y·grid/H⌋, ⌊x·grid/W⌋)``; σ is shared over the channels.
    """
    lead = sigma.shape[:-2]
    flat = sigma.reshape(-1, 1, *sigma.shape[-2:])
    return F.interpolate(flat, size=size, mode="nearest").reshape(*lead, 1, *size)


class Units:
    """Base of the unit types. A unit type is plain configuration (picklable, comparable); :meth:`bind`
    checks it against a model and its inputs and returns what the engine uses."""

    kind = "units"

    def bind(self, model: nn.Module, inputs: Tensor) -> BoundUnits:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_inputs(self, inputs: object) -> Tensor:  # pragma: no cover - abstract
        """``inputs`` if they have this unit type's layout, else one sentence saying what is expected."""
        raise NotImplementedError

    def unit_shape(self, inputs: Tensor) -> tuple[int, ...]:  # pragma: no cover - abstract
        """The units of one of ``inputs`` (checked inputs)."""
        raise NotImplementedError

    def valid(self, inputs: Tensor) -> Tensor | None:
        """``[N, *units]`` bool, the positions of ``inputs`` that are units (``None``: all of them)."""
        return None


class BoundUnits:
    """A unit type bound to one model and one set of inputs.

    Attributes:
        shape: the unit shape of one input (``(grid, grid)``, ``(T,)`` or ``(P,)``).
        valid: ``[N, *shape]`` bool, the units that exist (``None``: all of them).
        noise_shape: the shape of one noise sample of one input.
    """

    shape: tuple[int, ...]
    valid: Tensor | None = None
    noise_shape: tuple[int, ...]
    fold_graph = True  # whether the engine may run a traced copy of the forward (no hooks involved)

    inputs: Tensor

    def features(self, feature: FeatureOf, positions: list[int], sigma: Tensor, noise: Tensor) -> Tensor:
        """``g`` of the perturbed inputs at ``positions`` (rows of the bound inputs): ``sigma [k, *shape]``,
        ``noise [k, M, *noise]`` → features ``[k·M, ...]``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def feature_mask(self, positions: list[int], feature: Tensor) -> Tensor | None:
        """Per input of ``positions``, which elements of its feature ``[n, ...]`` count in the MSE (``None``:
        all of them)."""
        return None


@dataclass(frozen=True)
class ImageGrid(Units):
    """σ per cell of a ``grid × grid`` partition of images ``[N, C, H, W]``, shared over channels (§1.1).

    Example::

        >>> ImageGrid(grid=8)
        ImageGrid(grid=8)
    """

    grid: int = 16
    kind = "image"

    def __post_init__(self) -> None:
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"`grid` must be an integer ≥ 1 (units per side), got {self.grid!r}.")

    def check_inputs(self, inputs: object) -> Tensor:
        if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
            described = _describe(inputs)
            hint = (
                " (convert 0..255 pixels with `images.float() / 255`, then normalise)"
                if isinstance(inputs, Tensor) and inputs.dtype == torch.uint8
                else ""
            )
            raise ValueError(f"`images` must be a 4-D float tensor [N, C, H, W], got {described}{hint}.")
        _check_finite(inputs, "images", "images")
        height, width = inputs.shape[-2:]
        if self.grid > min(height, width):
            raise ValueError(
                f"`grid` must be an integer ≥ 1, at most the image size {height}×{width}, got {self.grid!r}."
            )
        return inputs

    def unit_shape(self, inputs: Tensor) -> tuple[int, ...]:
        return (self.grid, self.grid)

    def bind(self, model: nn.Module, inputs: Tensor) -> BoundUnits:
        return _BoundGrid(self.grid, inputs)


class _BoundGrid(BoundUnits):
    def __init__(self, grid: int, inputs: Tensor) -> None:
        self.inputs, self.shape, self.noise_shape = inputs, (grid, grid), tuple(inputs.shape[1:])
        self.size = (inputs.shape[-2], inputs.shape[-1])

    def features(self, feature: FeatureOf, positions: list[int], sigma: Tensor, noise: Tensor) -> Tensor:
        count, rows = noise.shape[:2]
        perturbed = self.inputs[positions].unsqueeze(1) + upsample_units(sigma, self.size).unsqueeze(1) * noise
        return feature(perturbed.reshape(count * rows, *noise.shape[2:]))


@dataclass(frozen=True)
class Points(Units):
    """σ per point of point clouds ``[N, P, D]`` (``channels_first=True``: ``[N, D, P]``), shared over the
    point's coordinates (§1.1, [KP-J]).

    Example::

        >>> Points()
        Points(channels_first=False)
    """

    channels_first: bool = False
    kind = "points"

    def __post_init__(self) -> None:
        if not isinstance(self.channels_first, bool):
            raise ValueError(f"`channels_first` must be True or False, got {self.channels_first!r}.")

    def check_inputs(self, inputs: object) -> Tensor:
        layout = "[N, D, P]" if self.channels_first else "[N, P, D]"
        if not isinstance(inputs, Tensor) or inputs.dim() != 3 or not inputs.is_floating_point():
            raise ValueError(f"`points` must be a 3-D float tensor {layout}, got {_describe(inputs)}.")
        _check_finite(inputs, "points", "point clouds")
        return inputs

    def unit_shape(self, inputs: Tensor) -> tuple[int, ...]:
        return (inputs.shape[2] if self.channels_first else inputs.shape[1],)

    def bind(self, model: nn.Module, inputs: Tensor) -> BoundUnits:
        return _BoundPoints(self.channels_first, inputs)


class _BoundPoints(BoundUnits):
    def __init__(self, channels_first: bool, inputs: Tensor) -> None:
        self.inputs, self.channels_first = inputs, channels_first
        self.shape = (inputs.shape[2] if channels_first else inputs.shape[1],)
        # noise is drawn point by point ([P, D]) in either layout, so the layout never changes a map
        self.noise_shape = (inputs.shape[2], inputs.shape[1]) if channels_first else tuple(inputs.shape[1:])

    def features(self, feature: FeatureOf, positions: list[int], sigma: Tensor, noise: Tensor) -> Tensor:
        count, rows = noise.shape[:2]
        if self.channels_first:
            noise = noise.transpose(-1, -2)
        spread = sigma[:, None, None, :] if self.channels_first else sigma[:, None, :, None]
        perturbed = self.inputs[positions].unsqueeze(1) + spread * noise
        return feature(perturbed.reshape(count * rows, *noise.shape[2:]))


@dataclass(frozen=True)
class Tokens(Units):
    """σ per token of token ids ``[N, T]``, shared over the embedding dimensions; the noise is added to the
    output ``[N, T, D]`` of the module named ``embedding`` (§1.1, [KP-J]). Tokens equal to ``pad_id`` are
    padding: not units, never perturbed, NaN in the maps (``pad_id=None``: every position is a token).

    The model is called with the token ids alone (``model(tokens)``); it must use the embedding module's
    output. When the probed layer's output is laid out ``[N, T, ...]``, its padding positions are left out of
    the feature MSE.

    Example::

        >>> Tokens(embedding="embedding")
        Tokens(embedding='embedding', pad_id=0)
    """

    embedding: str = "embedding"
    pad_id: int | None = 0
    kind = "tokens"

    def __post_init__(self) -> None:
        if not isinstance(self.embedding, str) or not self.embedding:
            raise ValueError(f"`embedding` must be the dotted name of the embedding module, got {self.embedding!r}.")
        if self.pad_id is not None and (isinstance(self.pad_id, bool) or not isinstance(self.pad_id, int)):
            raise ValueError(f"`pad_id` must be an integer token id or None, got {self.pad_id!r}.")

    def check_inputs(self, inputs: object) -> Tensor:
        if not isinstance(inputs, Tensor) or inputs.dim() != 2 or inputs.is_floating_point() or inputs.is_complex():
            raise ValueError(f"`tokens` must be a 2-D integer tensor of token ids [N, T], got {_describe(inputs)}.")
        if inputs.dtype == torch.bool:
            raise ValueError(f"`tokens` must be a 2-D integer tensor of token ids [N, T], got {_describe(inputs)}.")
        return inputs

    def unit_shape(self, inputs: Tensor) -> tuple[int, ...]:
        return (inputs.shape[1],)

    def valid(self, inputs: Tensor) -> Tensor | None:
        return torch.ones_like(inputs, dtype=torch.bool) if self.pad_id is None else inputs != self.pad_id

    def bind(self, model: nn.Module, inputs: Tensor) -> BoundUnits:
        return _BoundTokens(self, model, inputs)


class _BoundTokens(BoundUnits):
    fold_graph = False  # the noise enters through a hook on the embedding module

    def __init__(self, units: Tokens, model: nn.Module, inputs: Tensor) -> None:
        self.module = resolve_layer(model, units.embedding, argument="embedding")
        self.inputs = inputs
        count, length = inputs.shape
        self.valid = units.valid(inputs)
        assert self.valid is not None
        empty = ~self.valid.any(dim=1)
        if empty.any():
            raise ValueError(
                f"`tokens`: {int(empty.sum())} of {count} sequences are all padding (`pad_id`={units.pad_id}); "
                "every sequence needs at least one token."
            )
        captured: list[Tensor] = []
        handle = self.module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with torch.no_grad():
                model(inputs[:1])
        finally:
            handle.remove()
        if not captured or not isinstance(captured[0], Tensor) or captured[0].dim() < 3:
            got = tuple(captured[0].shape) if captured and isinstance(captured[0], Tensor) else "nothing"
            raise ValueError(
                f"`embedding`={units.embedding!r} must output token vectors [N, T, D] when the model runs on "
                f"tokens [1, {length}], got {got}."
            )
        output = captured[0]
        if tuple(output.shape[:2]) != (1, length):
            raise ValueError(
                f"`embedding`={units.embedding!r} must output token vectors [N, T, D] (batch first) for tokens "
                f"[1, {length}], got {tuple(output.shape)}."
            )
        self.shape, self.noise_shape = (length,), tuple(output.shape[1:])
        self.length = length

    def features(self, feature: FeatureOf, positions: list[int], sigma: Tensor, noise: Tensor) -> Tensor:
        assert self.valid is not None
        count, rows = noise.shape[:2]
        spread = (sigma * self.valid[positions]).reshape(count, 1, self.length, *([1] * (noise.dim() - 3)))
        delta = (spread * noise).reshape(count * rows, *noise.shape[2:])

        def add_noise(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
            return output + delta

        handle = self.module.register_forward_hook(add_noise)
        try:
            return feature(self.inputs[positions].repeat_interleave(rows, dim=0))
        finally:
            handle.remove()

    def feature_mask(self, positions: list[int], feature: Tensor) -> Tensor | None:
        assert self.valid is not None
        if feature.dim() < 2 or feature.shape[1] != self.length:
            return None
        mask = self.valid[positions].to(feature.dtype)
        return mask.reshape(*mask.shape, *([1] * (feature.dim() - 2))).expand_as(feature)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dim()}-D {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def _check_finite(inputs: Tensor, argument: str, what: str) -> None:
    if not torch.isfinite(inputs).all():
        bad = int((~torch.isfinite(inputs)).flatten(1).any(dim=1).sum())
        raise ValueError(f"`{argument}` contains NaN or infinite values (in {bad} of {inputs.shape[0]} {what}).")
