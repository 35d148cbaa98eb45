"""Optimiser and learning-rate schedule shared by every DistillationModule stage and by baselines."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
_NOT_A_NUMBER = " (a finite number is expected; bools and strings are not numbers here)"


def check_number(name: str, value: object, minimum: float, *, strict: bool, below: float | None = None) -> None:
    """Refuse anything but a finite ``int``/``float`` (not a bool) ``> minimum`` (``strict``) or ``>= minimum``,
    and ``< below`` when given, in one sentence naming the argument and the value."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    valid = number and (value > minimum if strict else value >= minimum) and (below is None or value < below)  # type: ignore[operator]
    if not valid:
        rule = f"in [{minimum}, {below})" if below is not None else f"{'>' if strict else '>='} {minimum}"
        raise ValueError(f"`{name}` must be {rule}, got {value!r}{'' if number else _NOT_A_NUMBER}.")


SCHEDULES = (None, "cosine", "step")


@dataclass(frozen=True)
class OptimizerOptions:
    """Optimiser settings, checked when created (one sentence per mistake)."""

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str | None = "cosine"
    milestones: Sequence[float] = (0.5, 0.75)
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {self.schedule!r}.")
        check_number("lr", self.lr, 0, strict=True)
        check_number("momentum", self.momentum, 0, strict=False, below=1)
        check_number("weight_decay", self.weight_decay, 0, strict=False)
        milestones = self.milestones
        if (
            isinstance(milestones, str)
            or not isinstance(milestones, Sequence)
            or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in milestones)
            or list(milestones) != sorted(milestones)
        ):
            raise ValueError(
                f"`milestones` must be increasing fractions of training in (0, 1), got {self.milestones!r}."
            )
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not 0 < self.gamma <= 1:
            raise ValueError(f"`gamma` must be in (0, 1], got {self.gamma!r}.")

    def build(self, parameters: Iterable[nn.Parameter], total_steps: float) -> Any:
        """The optimiser, with a per-step cosine or step schedule over ``total_steps`` when asked for.

        Returns what ``LightningModule.configure_optimizers`` returns.
        """
        params = list(parameters)
        if not params:
            raise ValueError("there is nothing to train: every parameter of the student (and adapters) is frozen.")
        if self.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule is None:
            return opt
        if not math.isfinite(total_steps):
            raise ValueError(
                f"`schedule`={self.schedule!r} needs a finite training length: set the Trainer's max_epochs or max_steps."
            )
        total = max(1, int(total_steps))
        if self.schedule == "cosine":
            scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=total
            )
        else:
            steps = [max(1, int(f * total)) for f in self.milestones]
            scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=self.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
