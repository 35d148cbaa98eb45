"""Optimiser and learning-rate schedule shared by every DistillationModule stage and by baselines."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = (None, "cosine", "step")


def check_optimizer_options(
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    schedule: str | None,
    milestones: Sequence[float],
    gamma: float,
) -> None:
    """Refuse bad optimiser settings at construction, one sentence per mistake."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {optimizer!r}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}.")
    if not lr > 0:
        raise ValueError(f"`lr` must be > 0, got {lr!r}.")
    if not 0 <= momentum < 1:
        raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}.")
    if weight_decay < 0:
        raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay!r}.")
    if not all(0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
        raise ValueError(f"`milestones` must be increasing fractions of training in (0, 1), got {tuple(milestones)!r}.")
    if not 0 < gamma <= 1:
        raise ValueError(f"`gamma` must be in (0, 1], got {gamma!r}.")


def build_optimizer(
    parameters: Iterable[nn.Parameter],
    total_steps: float,
    *,
    optimizer: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    schedule: str | None,
    milestones: Sequence[float],
    gamma: float,
) -> Any:
    """The optimiser, with a per-step cosine or step schedule over ``total_steps`` when asked for.

    Returns what ``LightningModule.configure_optimizers`` returns.
    """
    params = list(parameters)
    if not params:
        raise ValueError("there is nothing to train: every parameter of the student (and adapters) is frozen.")
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if schedule is None:
        return opt
    if not math.isfinite(total_steps):
        raise ValueError(
            f"`schedule`={schedule!r} needs a finite training length: set the Trainer's max_epochs or max_steps."
        )
    total = max(1, int(total_steps))
    if schedule == "cosine":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        steps = [max(1, int(f * total)) for f in milestones]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=gamma)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
