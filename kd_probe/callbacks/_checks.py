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
from kd_probe.core.sigma import METHODS, _check_int
from kd_probe.core.tokens import check_prefix_tokens, token_grid
from kd_probe.core.unicam import OBJECTIVES

__all__ = [
    "check_agreement_options",
    "check_agreement_setup",
    "check_cam_layer",
    "check_images_fit",
    "check_knowledge_point_setup",
    "check_normalization",
    "check_prefix_tokens",
    "check_sigma_options",
    "check_unicam_options",
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


def check_normalization(normalization: object, channels: int) -> None:
    """``normalization`` is ``None`` or ``(mean, std)`` with 1 or ``channels`` numbers each, ``std > 0``."""
    if normalization is None:
        return
    pair = isinstance(normalization, (tuple, list)) and len(normalization) == 2
    given: Sequence[Any] = normalization if isinstance(normalization, (tuple, list)) else ()
    parts = [list(torch.as_tensor(p, dtype=torch.float64).flatten().tolist()) for p in given] if pair else []
    if not pair or any(len(p) not in (1, channels) for p in parts):
        raise ValueError(
            f"`normalization` must be (mean, std) with 1 or {channels} numbers each (one per channel of the "
            f"images), got {normalization!r}."
        )
    if not all(math.isfinite(v) for p in parts for v in p) or not all(v > 0 for v in parts[1]):
        raise ValueError(f"`normalization` must hold finite means and positive stds, got {normalization!r}.")


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


def _check_runs(outputs: list, argument: str, layer: str, network: nn.Module) -> None:
    if not outputs:
        raise ValueError(
            f"`{argument}`={layer!r} is a module of {type(network).__name__} but is never called in its forward; "
            "name a layer the forward runs."
        )


def check_images_fit(images: Tensor, **networks: nn.Module | None) -> None:
    """Each network given (by role; ``None`` is skipped) takes the probe images: one dry forward of the first
    image."""
    for role, network in networks.items():
        if network is not None:
            _dry_forward(network, images, [], role)


def check_knowledge_point_setup(network: nn.Module, images: Tensor, layer: str) -> None:
    """The network takes the probe images and calls ``layer`` exactly once per forward (a module shared by several
    calls would mix them in one σ map)."""
    _, outputs = _dry_forward(network, images, [layer], "network")
    _check_runs(outputs[layer], "layer", layer, network)
    if len(outputs[layer]) > 1:
        raise ValueError(
            f"`layer`={layer!r} is called {len(outputs[layer])} times in one forward of {type(network).__name__} "
            "(a shared module); its σ map would mix the calls: name a module that runs once."
        )


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
    """Teacher, student (and reference) take the probe images; their Grad-CAM layers run and give feature maps
    (``[N, C, H, W]``) or tokens that tile the image; the labels are classes of every model's logits."""
    checks = [
        (teacher, teacher_layer, "teacher_layer", "teacher"),
        (student, student_layer, "student_layer", "student"),
    ]
    if reference is not None:
        checks.append((reference, student_layer, "student_layer", "reference"))
    for network, layer, argument, role in checks:
        logits, outputs = _dry_forward(network, images, [layer], role)
        _check_runs(outputs[layer], argument, layer, network)
        output = outputs[layer][0]
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


def check_cam_layer(
    shape: tuple[int, ...], images: Tensor, argument: str, layer: str, prefix_tokens: int | None
) -> None:
    """A CAM layer's output for one image (``shape``) is a feature map, or tokens that tile the image."""
    token_grid(
        torch.empty(shape, device="meta"),
        tuple(images.shape[-2:]),
        batch=shape[0],
        prefix_tokens=prefix_tokens,
        layer=layer,
        argument=argument,
    )
