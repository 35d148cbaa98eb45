"""``check_module_options``: ``DistillationModule`` keyword options checked before any training starts."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from kd_probe.modules._optim import OptimizerOptions, check_number

__all__ = ["check_module_options"]


def check_module_options(options: Mapping[str, Any], argument: str, reserved: Sequence[str] = ()) -> None:
    """Check ``DistillationModule`` keyword options before any training: unknown names, names the caller sets
    itself (``reserved``), and every number (so a bad second-phase option is refused before the first phase)."""
    from kd_probe.modules.distillation import DistillationModule

    parameters = inspect.signature(DistillationModule.__init__).parameters
    known = sorted(set(parameters) - {"self", "student", "teacher"})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"`{argument}` has unknown DistillationModule options {unknown}; expected some of {known}.")
    taken = sorted(set(options) & set(reserved))
    if taken:
        raise ValueError(f"`{argument}` sets {taken}, which run_two_phase sets itself for each phase.")
    values = {name: options.get(name, parameters[name].default) for name in known}
    check_number("temperature", values["temperature"], 0, strict=True)
    for name in ("kd_weight", "ce_weight", "feature_weight"):
        check_number(name, values[name], 0, strict=False)
    milestones = values["milestones"]
    OptimizerOptions(
        values["optimizer"],
        values["lr"],
        values["momentum"],
        values["weight_decay"],
        values["schedule"],
        tuple(milestones) if isinstance(milestones, Sequence) and not isinstance(milestones, str) else milestones,
        values["gamma"],
    )
