"""The probes compute in float32 whatever autocast their caller runs under (pure torch, no Lightning).

A probe called inside a user's ``torch.autocast(..., dtype=torch.bfloat16)`` would otherwise run its
convolutions in bfloat16: σ maps, Grad-CAMs and attacks would depend on the caller's precision. The public
entry points that run a model turn autocast off on every device type where it is on, for the duration of
the call, so their results equal those of the same call outside autocast. The distillation losses are not
wrapped: they run inside training steps under the training precision on purpose.

The σ engine's ``precision=`` option (methods §4.6) asks for something else on purpose: float32 with TF32 off or
on (:func:`matmul_precision`), or the model's forward in bfloat16 (:func:`bfloat16_forward`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor

__all__ = [
    "AUTOCAST_DEVICES",
    "PRECISIONS",
    "autocast_off",
    "bfloat16_forward",
    "check_precision_mode",
    "computes_in_float32",
    "matmul_precision",
]

AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia", "privateuseone")
PRECISIONS = (None, "float32", "tf32", "bf16")  # the σ engine's `precision` (methods §4.6)

_Parameters = ParamSpec("_Parameters")
_Result = TypeVar("_Result")


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type``; ``False`` for a device type this build of torch lacks."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (RuntimeError, TypeError):
        return False


@contextmanager
def autocast_off() -> Iterator[None]:
    """Autocast off, inside the block, on every device type where it is on; nothing changes where it is off.

    Example::

        >>> with torch.autocast("cpu", dtype=torch.bfloat16), autocast_off():
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    with ExitStack() as stack:
        for device_type in AUTOCAST_DEVICES:
            if _autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def computes_in_float32(function: Callable[_Parameters, _Result]) -> Callable[_Parameters, _Result]:
    """Run ``function`` under :func:`autocast_off`: a probe's result does not depend on the caller's autocast."""

    @functools.wraps(function)
    def wrapper(*args: _Parameters.args, **kwargs: _Parameters.kwargs) -> _Result:
        with autocast_off():
            return function(*args, **kwargs)

    return wrapper


def check_precision_mode(value: object) -> None:
    """``precision`` of the σ engine: ``None``, ``"float32"``, ``"tf32"`` or ``"bf16"`` (methods §4.6)."""
    if not (value is None or (isinstance(value, str) and value in PRECISIONS)):
        raise ValueError(f"`precision` must be None, 'float32', 'tf32' or 'bf16', got {value!r}.")


def _fp32_backends() -> tuple[list[Any], list[Any]]:
    """The backends whose float32 precision torch ≥ 2.9 sets one by one (``fp32_precision``: ``"ieee"``, ``"tf32"``,
    ``"bf16"`` or ``"none"``): the CUDA ones (cuBLAS matmuls, cuDNN convolutions and RNNs) and the CPU's oneDNN ones;
    two empty lists on a torch without that API."""
    backends = torch.backends
    try:
        cuda = [backends.cuda.matmul, backends.cudnn.conv, backends.cudnn.rnn]  # type: ignore[attr-defined]
        cpu = [backends.mkldnn.matmul, backends.mkldnn.conv, backends.mkldnn.rnn]  # type: ignore[attr-defined]
        values = {backend.fp32_precision for backend in [backends, *cuda, *cpu]}
    except AttributeError:
        return [], []
    return (cuda, cpu) if values <= {"ieee", "tf32", "bf16", "none"} else ([], [])


@contextmanager
def matmul_precision(precision: str | None) -> Iterator[None]:
    """The float32 matmuls and convolutions of the σ engine's ``precision`` (methods §4.6) inside the block, and
    the flags as they were after it, also on an exception.

    ``"float32"``: TF32 off for CUDA matmuls and cuDNN (``allow_tf32`` False), and IEEE float32 in oneDNN on the
    CPU (where ``torch.set_float32_matmul_precision("medium")`` lets matmuls compute in bfloat16). ``"bf16"``: the
    same, for what stays in float32 (``σ_f``'s forward, the operations autocast leaves in float32); its bfloat16
    forwards are :func:`bfloat16_forward`'s. ``"tf32"``: TF32 on for CUDA matmuls and cuDNN; the CPU is left as it
    is. ``None`` changes nothing. On torch ≥ 2.9 the flags are set and restored through each
    backend's ``fp32_precision``, onto which the legacy ``allow_tf32`` setters map (the legacy getters raise once
    the new API has been used, so they are never read); on an older torch through
    ``torch.set_float32_matmul_precision`` and ``torch.backends.cudnn.allow_tf32``.

    Example::

        >>> x = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
        >>> with matmul_precision("float32"):  # TF32 off for the block; the CPU computes float32 as by default
        ...     product = x @ x
        >>> torch.equal(product, x @ x)
        True
    """
    check_precision_mode(precision)
    if precision is None:
        yield
        return
    tf32 = precision == "tf32"
    cuda, cpu = _fp32_backends()
    if cuda:
        pinned = cuda + ([] if tf32 else cpu)
        saved = [backend.fp32_precision for backend in pinned]
        try:
            for backend in pinned:
                backend.fp32_precision = "tf32" if tf32 else "ieee"
            yield
        finally:
            for backend, value in zip(pinned, saved, strict=True):
                backend.fp32_precision = value
        return
    legacy = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    try:
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = tf32
        yield
    finally:
        torch.set_float32_matmul_precision(legacy[0])
        torch.backends.cudnn.allow_tf32 = legacy[1]


def bfloat16_forward(
    forward: Callable[[Tensor], Tensor], device_type: str, dtype: torch.dtype
) -> Callable[[Tensor], Tensor]:
    """``forward`` run under ``torch.autocast(device_type, dtype=torch.bfloat16)``, its output cast to ``dtype``:
    the σ engine's ``precision="bf16"`` (methods §4.6), the model's matmuls and convolutions in bfloat16 and what
    the engine computes from the features (squared error, σ, noise) in ``dtype``. No cast of the weights is cached
    from one call to the next, inside a caller's autocast or not."""

    def reduced(inputs: Tensor) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False):
            feature = forward(inputs)
        return feature.to(dtype)

    return reduced
