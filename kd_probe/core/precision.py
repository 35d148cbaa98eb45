"""The probes compute in float32 whatever autocast their caller runs under (pure torch, no Lightning).

A probe called inside a user's ``torch.autocast(..., dtype=torch.bfloat16)`` would otherwise run its
convolutions in bfloat16: σ maps, Grad-CAMs and attacks would depend on the caller's precision. The public
entry points that run a model turn autocast off on every device type where it is on, for the duration of
the call, so their results equal those of the same call outside autocast. The distillation losses are not
wrapped: they run inside training steps under the training precision on purpose.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import ParamSpec, TypeVar

import torch

__all__ = ["AUTOCAST_DEVICES", "autocast_off", "computes_in_float32"]

AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia", "privateuseone")

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
