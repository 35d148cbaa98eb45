"""The probes every student of the demo carries (:mod:`kd_probe.apps.demo.run`): knowledge points and the weight
monitor always; on images also agreement with the teacher, UniCAM's FSS/RS and representation similarity, on
held-out validation images."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import Subset

from kd_probe.apps.demo.modalities import Modality
from kd_probe.apps.demo.plan import Plan, ProbeClock, sigma_options
from kd_probe.callbacks import (
    AgreementProbe,
    KnowledgePointProbe,
    SimilarityProbe,
    UniCAMProbe,
    WeightTrajectoryMonitor,
)
from kd_probe.data import ShapesDataModule

__all__ = ["agreement_probe", "knowledge_probes", "student_probes", "unicam_probe"]


def knowledge_probes(plan: Plan, kit: Modality, seed: int, clocks: list[ProbeClock]) -> list[pl.Callback]:
    options = {**sigma_options(plan), "layer": kit.layer}
    if not kit.images:
        options.pop("grid")  # the data module's units: one σ per token or point
    probe = KnowledgePointProbe(kit.data, epochs=plan.schedule, seed=seed, **options)
    clocks.append(ProbeClock(probe))
    return [probe, clocks[-1], WeightTrajectoryMonitor()]


def student_probes(plan: Plan, kit: Modality, teacher: Any, seed: int, clocks: list[ProbeClock]) -> list[pl.Callback]:
    """The probes of a student: knowledge points always; teacher agreement and UniCAM on images only."""
    probes = knowledge_probes(plan, kit, seed, clocks)
    if kit.images:
        assert isinstance(kit.data, ShapesDataModule)
        probes += [
            agreement_probe(plan, kit.data, teacher, seed),
            unicam_probe(plan, kit.data, teacher),
            _similarity(plan, kit.data, teacher),
        ]
    return probes


def _held_out(plan: Plan, data: ShapesDataModule) -> Subset:
    """The first validation images (with their masks) of the agreement and UniCAM probes: 64 (16 in the quick
    demo), more than the knowledge-point probe's, since both measure shares and batch statistics."""
    return Subset(data.val_set, range(min(plan.unicam_images, len(data.val_set))))


def agreement_probe(plan: Plan, data: ShapesDataModule, teacher: Any, seed: int) -> AgreementProbe:
    """[WK]'s agreement with the teacher, for distilled and baseline students alike (teacher given directly), with
    the default ε sweep (1, 2, 4 and 8 grey levels: at 1/255 the teacher is rarely fooled)."""
    return AgreementProbe(
        _held_out(plan, data),
        teacher_layer=f"features.relu{2 * len(plan.teacher_widths)}",
        student_layer=f"features.relu{2 * len(plan.student_widths)}",
        teacher=teacher,
        normalization=(data.mean, data.std),
        seed=seed,
    )


def unicam_probe(plan: Plan, data: ShapesDataModule, teacher: Any) -> UniCAMProbe:
    """[UC]'s FSS/RS at the end of every stage and UniCAM maps at the last convolution, on held-out validation
    images (distance correlations are batch statistics: more images than the knowledge-point probe's)."""
    stages = [f"features.relu{2 * (stage + 1)}" for stage in range(len(plan.student_widths))]
    return UniCAMProbe(
        _held_out(plan, data),
        layers=stages,
        cam_layer=stages[-1],
        teacher=teacher,
        normalization=(data.mean, data.std),
    )


def _similarity(plan: Plan, data: ShapesDataModule, teacher: Any) -> SimilarityProbe:
    """CKA between the student's and the teacher's stage outputs and the class-correlation gap (methods §7), on
    the agreement and UniCAM probes' held-out images."""
    return SimilarityProbe(_held_out(plan, data), teacher=teacher)
