"""The two-phase feature-mimicking protocol of the knowledge-point paper (methods §1.7), in one call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from torch import nn

from kd_probe.core.layers import resolve_layer
from kd_probe.modules._options import check_module_options
from kd_probe.modules.distillation import DistillationModule

__all__ = ["TwoPhaseResult", "run_two_phase"]


@dataclass
class TwoPhaseResult:
    """The modules and trainers of both phases; ``head_module.student`` is the finished student."""

    mimic_module: DistillationModule
    mimic_trainer: pl.Trainer
    head_module: DistillationModule
    head_trainer: pl.Trainer


def run_two_phase(
    student: nn.Module,
    teacher: nn.Module,
    datamodule: pl.LightningDataModule,
    *,
    layer: str,
    teacher_layer: str | None = None,
    mimic_epochs: int = 10,
    head_epochs: int = 10,
    trainer_options: dict[str, Any] | None = None,
    mimic_trainer_options: dict[str, Any] | None = None,
    head_trainer_options: dict[str, Any] | None = None,
    mimic_callbacks: Sequence[pl.Callback] = (),
    head_callbacks: Sequence[pl.Callback] = (),
    mimic_options: dict[str, Any] | None = None,
    head_options: dict[str, Any] | None = None,
    **module_options: Any,
) -> TwoPhaseResult:
    """Distil ``teacher`` into ``student`` with the [KP] protocol: mimic one layer, then train the head.

    Phase 1 (``stage="mimic"``) trains the student only on ``MSE(f_student(x), f_teacher(x))`` at
    ``layer``, no labels. [KP] matches the pre-ReLU output: in the built-in ``VGG`` with BatchNorm that is
    ``features.bn{i}`` (``features.conv{i}`` without BatchNorm); the knowledge-point
    metrics of [KP] are measured on this phase's checkpoints, so put the probes in ``mimic_callbacks``.
    Phase 2 (``stage="head"``) freezes every student module up to and including ``layer`` and trains
    the rest with cross-entropy. The same ``student`` object is trained in place by both phases.

    Args:
        student: the student network (in [KP], the teacher's architecture).
        teacher: the trained teacher.
        datamodule: the data, with labelled batches ``(inputs, labels, ...)``.
        layer: the student layer ``L``.
        teacher_layer: the teacher layer matched with ``L`` (default: the same name).
        mimic_epochs, head_epochs: epochs of each phase.
        trainer_options: keyword arguments of both ``pl.Trainer`` s (e.g. ``accelerator``).
        mimic_trainer_options, head_trainer_options: ``pl.Trainer`` arguments for one phase only (e.g. a
            ``logger`` per phase, so that the two phases' curves do not overwrite each other's steps).
        mimic_callbacks, head_callbacks: callbacks of each phase.
        mimic_options, head_options: ``DistillationModule`` options for one phase only.
        **module_options: ``DistillationModule`` options for both phases (optimiser, schedule, …).

    Example::

        from kd_probe import ShapesDataModule, run_two_phase
        from kd_probe.models import VGG
        data = ShapesDataModule(num_classes=6)
        result = run_two_phase(VGG(num_classes=6), trained_teacher, data,
                               layer="features.bn4", mimic_epochs=20, head_epochs=10)
        result.head_trainer.test(result.head_module, datamodule=data)
    """
    if not isinstance(teacher, nn.Module):
        raise ValueError(f"`teacher` must be the trained teacher, an nn.Module, got {teacher!r}.")
    if not isinstance(datamodule, pl.LightningDataModule):
        raise ValueError(f"`datamodule` must be a LightningDataModule, got {type(datamodule).__name__}.")
    resolve_layer(student, layer, argument="layer")
    resolve_layer(teacher, teacher_layer or layer, argument="teacher_layer" if teacher_layer else "layer")
    for name, epochs in (("mimic_epochs", mimic_epochs), ("head_epochs", head_epochs)):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"`{name}` must be an integer ≥ 1, got {epochs!r}.")
    reserved = ("stage", "feature_pairs", "freeze_through")
    for argument, options in (
        ("module_options", module_options),
        ("mimic_options", {**module_options, **(mimic_options or {})}),
        ("head_options", {**module_options, **(head_options or {})}),
    ):
        check_module_options(options, argument, reserved)
    mimic = DistillationModule(
        student,
        teacher,
        stage="mimic",
        feature_pairs={layer: teacher_layer or layer},
        **{**module_options, **(mimic_options or {})},
    )
    mimic_trainer = pl.Trainer(
        max_epochs=mimic_epochs,
        callbacks=list(mimic_callbacks),
        **{**(trainer_options or {}), **(mimic_trainer_options or {})},
    )
    mimic_trainer.fit(mimic, datamodule=datamodule)
    head = DistillationModule(student, stage="head", freeze_through=layer, **{**module_options, **(head_options or {})})
    head_trainer = pl.Trainer(
        max_epochs=head_epochs,
        callbacks=list(head_callbacks),
        **{**(trainer_options or {}), **(head_trainer_options or {})},
    )
    head_trainer.fit(head, datamodule=datamodule)
    return TwoPhaseResult(mimic, mimic_trainer, head, head_trainer)
