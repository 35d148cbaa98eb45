"""Argument checks of the probe callbacks: plain arguments at construction, what needs the model at setup.

Each check raises one clear sentence naming the argument, the value given and what is expected (or warns, where
the input is legal but a result would be meaningless). The callbacks call them in one line each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_probe.core.layers import eval_forward, module_device, resolve_layer
from kd_probe.core.memory import budget_bytes
from kd_probe.core.precision import check_precision_mode
from kd_probe.core.sigma import METHODS, _check_int, check_noise_device
from kd_probe.core.tokens import check_prefix_tokens, token_grid
from kd_probe.core.unicam import OBJECTIVES

__all__ = [
    "check_agreement_options",
    "check_agreement_setup",
    "check_cam_layer",
    "check_knowledge_point_setup",
    "check_mean_std",
    "check_normalization",
    "check_prefix_tokens",
    "check_sigma_options",
    "check_unicam_options",
    "check_unicam_setup",
]


def _positive_number(name: str, value: object, *, zero: bool = False) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (value >= 0 if zero else value > 0):  # type: ignore[operator]
        raise ValueError(f"`{name}` must be a finite number {'≥' if zero else '>'} 0, got {value!r}.")


# ---------------------------------------------------------------------------------------------- construction
_SIGMA_OPTIONS = (  # what KnowledgePointProbe passes on to estimate_sigma_maps
    "grid",
    "samples",
    "steps",
    "lr",
    "lam",
    "target_entropy",
    "boost",
    "feature_relu",
    "seed",
    "max_batch",
    "memory_budget",
    "noise_device",
    "precision",
    "channels_last",
    "fold_batchnorm",
    "method",
    "passes",
    "patience",
    "units",
)


def check_sigma_options(options: Mapping[str, Any]) -> None:
    """The σ options of ``KnowledgePointProbe`` (see :func:`~kd_probe.estimate_sigma_maps`), checked at
    construction: a setup dry run uses one sample and one step, so it would not catch ``samples=0``."""
    unknown = sorted(set(options) - set(_SIGMA_OPTIONS))
    if unknown:
        raise ValueError(f"unknown σ options {unknown}; expected some of {list(_SIGMA_OPTIONS)}.")
    method = options.get("method", "faithful")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if options.get("passes") is not None and method != "secant":
        raise ValueError(f"`passes`={options['passes']!r} applies to method='secant' only, got method={method!r}.")
    for name in ("samples", "steps", "passes", "patience"):
        if options.get(name) is not None:
            _check_int(name, options[name], 1)
    if "grid" in options:
        _check_int("grid", options["grid"], 1)
    if "seed" in options:
        _check_int("seed", options["seed"], 0)
    if options.get("max_batch") is not None:
        _check_int("max_batch", options["max_batch"], 1)
    check_noise_device(options.get("noise_device"))
    check_precision_mode(options.get("precision"))
    if options.get("memory_budget") is not None:
        budget_bytes(options["memory_budget"], "cpu", free=1)  # checks the value only
    for name in ("lr", "boost"):
        if name in options:
            _positive_number(name, options[name])
    if "lam" in options:
        _positive_number("lam", options["lam"], zero=True)
    if "target_entropy" in options:
        value = options["target_entropy"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"`target_entropy` must be a finite number of nats, got {value!r}.")
    for name in ("feature_relu", "fold_batchnorm", "channels_last"):
        value = options.get(name, True)
        if not (isinstance(value, bool) or (name == "channels_last" and value is None)):
            raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def _numbers(value: object) -> list[float] | None:
    """The numbers of a ``mean`` or ``std`` (a number, a sequence or a tensor), ``None`` when it is not numbers."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        return [float(v) for v in torch.as_tensor(value, dtype=torch.float64).flatten().tolist()]
    except (TypeError, ValueError, RuntimeError):
        return None


def _valid_stats(numbers: list[float] | None, channels: int | None, positive: bool) -> bool:
    if not numbers or (channels is not None and len(numbers) not in (1, channels)):
        return False
    return all(math.isfinite(v) and (v > 0 or not positive) for v in numbers)


def _shown(value: object) -> str:
    """A ``mean``/``std`` on one line: a tensor as its shape and values (``repr`` would break the sentence)."""
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)} {value.detach().flatten()[:8].tolist()}"
    return repr(value)


def check_normalization(normalization: object, channels: int) -> None:
    """``normalization`` is ``None`` or ``(mean, std)`` with 1 or ``channels`` numbers each, ``std > 0``."""
    if normalization is None:
        return
    given: Sequence[Any] = normalization if isinstance(normalization, (tuple, list)) else ()
    pair = len(given) == 2
    parts = [_numbers(part) for part in given] if pair else []
    if not pair or any(part is None or len(part) not in (1, channels) for part in parts):
        raise ValueError(
            f"`normalization` must be (mean, std) with 1 or {channels} numbers each (one per channel of the "
            f"images), got {normalization!r}."
        )
    if not (_valid_stats(parts[0], channels, False) and _valid_stats(parts[1], channels, True)):
        raise ValueError(f"`normalization` must hold finite means and positive stds, got {normalization!r}.")


def check_mean_std(mean: object, std: object, channels: int | None, source: str) -> None:
    """The ``mean``/``std`` a probe set brings (a :class:`~kd_probe.callbacks._probe_sources.ProbeFile`'s, a data
    module's), checked as strictly as ``normalization``: both or neither, 1 or ``channels`` finite numbers each
    (any count when ``channels`` is ``None``: inputs that are not images), ``std > 0``. ``source`` names them."""
    if mean is None and std is None:
        return
    if mean is None or std is None:
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        raise ValueError(
            f"{source} has a '{given}' but no '{missing}'; give both (the inputs' normalisation per channel) or "
            "neither."
        )
    count = "finite numbers" if channels is None else f"1 or {channels} finite numbers (one per channel)"
    for key, value, positive in (("mean", mean, False), ("std", std, True)):
        if not _valid_stats(_numbers(value), channels, positive):
            raise ValueError(
                f"{source} has '{key}'={_shown(value)}; expected {count}{', each > 0' if positive else ''}, as "
                "`normalization` takes."
            )


def check_agreement_options(
    steps: object, transforms: object, log_images: object, seed: object, reference: object
) -> None:
    """The plain arguments of ``AgreementProbe`` (``eps``: :func:`~kd_probe.callbacks._agreement_eps.check_eps`)."""
    if isinstance(transforms, str):
        raise ValueError(f"`transforms` must be a list of transform names, got the string {transforms!r}.")
    _check_int("steps", steps, 1)
    _check_int("log_images", log_images, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, got {seed!r}.")
    if reference is not None and not isinstance(reference, nn.Module):
        raise ValueError(f"`reference` must be an nn.Module or None, got {type(reference).__name__}.")


def check_unicam_options(
    every_n_epochs: object,
    objective: object,
    log_images: object,
    reference: object,
    max_batch: object,
    normalize_rows: object,
) -> None:
    """The plain arguments of ``UniCAMProbe`` (``features``: :func:`~kd_probe.core.unicam.check_features`)."""
    _check_int("every_n_epochs", every_n_epochs, 1)
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}.")
    _check_int("log_images", log_images, 0)
    if reference is not None and not isinstance(reference, nn.Module):
        raise ValueError(f"`reference` must be an nn.Module or None, got {type(reference).__name__}.")
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"`max_batch` must be None or an integer ≥ 1 (images per pass), got {max_batch!r}.")
    if not isinstance(normalize_rows, bool):
        raise ValueError(f"`normalize_rows` must be True or False, got {normalize_rows!r}.")


# ---------------------------------------------------------------------------------------------- setup: one dry forward
def _dry_forward(network: nn.Module, images: Tensor, layers: Sequence[str], role: str) -> tuple[Any, dict[str, list]]:
    """One eval-mode forward of the first probe image, with every output of each named layer recorded; a network
    that refuses the images is reported with its own complaint in one line."""
    outputs: dict[str, list] = {layer: [] for layer in layers}
    handles = [
        resolve_layer(network, layer).register_forward_hook(
            lambda _module, _inputs, output, layer=layer: outputs[layer].append(output)
        )
        for layer in layers
    ]
    try:
        logits = eval_forward(network, images[:1].to(module_device(network, images.device)))
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        complaint = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"`images` of shape {tuple(images.shape)} cannot go through the {role} ({type(network).__name__}): "
            f"{complaint}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    return logits, outputs


def _run_once(outputs: list, argument: str, layer: str, network: nn.Module, mixed: str) -> Any:
    """The output of ``layer`` in a dry forward, which must call it exactly once: a module the forward never
    calls measures nothing, and one it calls several times (a shared module) would mix the calls in ``mixed``
    (what the probe computes there), whichever call a hook kept."""
    if not outputs:
        raise ValueError(
            f"`{argument}`={layer!r} is a module of {type(network).__name__} but is never called in its forward; "
            "name a layer the forward runs."
        )
    if len(outputs) > 1:
        raise ValueError(
            f"`{argument}`={layer!r} is called {len(outputs)} times in one forward of {type(network).__name__} "
            f"(a shared module); {mixed} would mix the calls: name a module that runs once."
        )
    return outputs[0]


def check_knowledge_point_setup(network: nn.Module, images: Tensor, layer: str) -> None:
    """The network takes the probe images and calls ``layer`` exactly once per forward (a module shared by several
    calls would mix them in one σ map)."""
    _, outputs = _dry_forward(network, images, [layer], "network")
    _run_once(outputs[layer], "layer", layer, network, "its σ map")


def check_agreement_setup(
    teacher: nn.Module,
    student: nn.Module,
    images: Tensor,
    labels: Tensor,
    teacher_layer: str,
    student_layer: str,
    reference: nn.Module | None = None,
    prefix_tokens: int | None = None,
) -> None:
    """Teacher, student (and reference) take the probe images; their Grad-CAM layers run once per forward and give
    feature maps (``[N, C, H, W]``) larger than 1×1 or tokens that tile the image; the labels are classes of every
    model's logits."""
    checks = [
        (teacher, teacher_layer, "teacher_layer", "teacher"),
        (student, student_layer, "student_layer", "student"),
    ]
    if reference is not None:
        checks.append((reference, student_layer, "student_layer", "reference"))
    for network, layer, argument, role in checks:
        logits, outputs = _dry_forward(network, images, [layer], role)
        output = _run_once(outputs[layer], argument, layer, network, "its Grad-CAM map")
        if not isinstance(output, Tensor):
            raise ValueError(f"`{argument}`={layer!r} outputs {type(output).__name__}; Grad-CAM needs a tensor.")
        check_cam_layer(tuple(output.shape), images, argument, layer, prefix_tokens)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the {role} must return logits [N, classes] for the probe images, got {shape}.")
        classes = logits.shape[1]
        if labels.numel() and int(labels.max()) >= classes:
            outside = sorted({int(v) for v in labels[labels >= classes].tolist()})
            raise ValueError(
                f"`labels` hold classes {outside[:8]} but the {role} ({type(network).__name__}) has {classes} "
                f"classes (0 to {classes - 1})."
            )


def check_unicam_setup(
    sides: Sequence[tuple[str, nn.Module, Sequence[str], str, bool]], images: Tensor, prefix_tokens: int | None
) -> None:
    """Each model of a ``UniCAMProbe``, given as ``(role, network, feature layers, CAM layer, whether its maps are
    drawn)``, takes the probe images and runs each of its layers exactly once per forward, with a tensor output;
    the CAM layers whose maps are drawn give feature maps larger than 1×1 or tokens that tile the image."""
    for _, network, layers, cam, _ in sides:  # every name first: a misspelt one is the likeliest mistake
        for layer in layers:
            resolve_layer(network, layer, argument="layers")
        resolve_layer(network, cam, argument="cam_layer")
    for role, network, layers, cam, drawn in sides:
        named = {layer: "layers" for layer in layers} | {cam: "cam_layer"}
        _, outputs = _dry_forward(network, images, list(named), role)
        for layer, argument in named.items():
            what = "its UniCAM map" if argument == "cam_layer" else "its features"
            output = _run_once(outputs[layer], argument, layer, network, what)
            if not isinstance(output, Tensor):
                raise ValueError(f"`{argument}`={layer!r} outputs {type(output).__name__}; UniCAM needs a tensor.")
            if layer == cam and drawn:
                check_cam_layer(tuple(output.shape), images, argument, layer, prefix_tokens)


def check_cam_layer(
    shape: tuple[int, ...], images: Tensor, argument: str, layer: str, prefix_tokens: int | None
) -> None:
    """A CAM layer's output for one image (``shape``) is a feature map, or tokens that tile the image, of more than
    one position: a 1×1 map (after global pooling) would make every class-activation map one value spread over the
    whole image."""
    grid = token_grid(
        torch.empty(shape, device="meta"),
        tuple(images.shape[-2:]),
        batch=shape[0],
        prefix_tokens=prefix_tokens,
        layer=layer,
        argument=argument,
    )
    if tuple(grid.shape[-2:]) == (1, 1):
        raise ValueError(
            f"`{argument}`={layer!r} outputs shape {shape}, a 1×1 map (one position per image, as after global "
            "pooling): its class-activation map would be one value spread over the whole image; expected a "
            "spatial map larger than 1×1 (a layer before the pooling) or transformer tokens of several patches."
        )
