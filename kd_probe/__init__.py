"""kd_probe: explain knowledge distillation while it happens, in PyTorch Lightning.

Public API:

- :class:`DistillationModule` — a KD ``LightningModule``: logit KD, feature/hint KD at named layers,
  the two-phase feature-mimicking protocol of the knowledge-point paper (``stage="mimic"`` then
  ``stage="head"``, or :func:`run_two_phase`), and the from-scratch baseline (``teacher=None``);
  ``losses=[...]`` trains with the KD methods of :mod:`kd_probe.losses` (KD, DKD, DIST, LogitStandardKD,
  FitNets, AT, NST, VID, SP, PKT, RKD, CC, CRD; their math in ``kd_probe.losses.functional``).
- :class:`ShapesDataModule` — built-in generated images with exact foreground masks;
  :class:`ImageMaskFolder` and :class:`CUB200` read real data as the same ``(image, label, mask)`` triples.
- :func:`estimate_sigma_maps` — the σ-map engine of the knowledge-point paper (which input units a layer
  keeps information about), returning :class:`SigmaMaps`; :func:`count_knowledge_points` turns entropy maps
  into knowledge points (:class:`KnowledgePoints`: ``N_fg``, ``N_bg``, ``fg_ratio``);
  :class:`KnowledgePointCount` accumulates them across batches and processes (a torchmetrics ``Metric``).
  Input units (methods §1.1): :class:`ImageGrid` (images, the default), :class:`Tokens` (σ per token on an
  embedding's output) and :class:`Points` (σ per point of a point cloud), the modalities of [KP-J].
- :class:`KnowledgePointProbe` — a Lightning callback that finds knowledge points on held-out images at
  scheduled epochs and logs their curves, image grids and per-image history (any LightningModule, DDP).
- :class:`WeightTrajectoryMonitor` — per-module weight step lengths, update cosines, direction consistency
  and path efficiency (methods §1.6); the probe itself logs D_mean, D_std, ρ and writes a JSON summary.
- :class:`AgreementProbe` — teacher–student agreement during training ([WK]): Grad-CAM localisation,
  adversarial transfer and invariance agreement, teacher side cached.
- :class:`ProbeRunner` — the same probes in a plain PyTorch loop (or over saved checkpoints), no ``Trainer``:
  ``start()``, ``step()`` after each optimizer step, ``epoch_end()``, ``finish()``; the same files and tags.
- :class:`SimilarityProbe` — teacher × student representation similarity during training (methods §7): the
  layer × layer CKA matrix (minibatch CKA) and the class-correlation gap of the logits; the math in
  ``kd_probe.functional`` (``linear_cka``, ``rbf_cka``, ``unbiased_hsic``, ``MinibatchCKA``,
  ``procrustes_distance``, ``class_correlation_gap``).
- :class:`UniCAM` — UniCAM maps ([UC]): where the features a student holds beyond its teacher (distilled) or
  the teacher holds beyond the student (residual) lie in the image, explained through a distance-correlation
  score; :class:`UniCAMProbe` logs FSS, RS (teacher, student, distilled, residual) and the maps during
  training; ``kd_probe.functional`` has ``distance_correlation`` (R*, FSS) and ``relevance_given`` (RS).
- :mod:`kd_probe.models` — small VGG/ResNet-style CNNs; :mod:`kd_probe.functional` — the pure-torch
  functions (σ maps, knowledge points, losses, layer lookup, feature capture).

Docstrings cite "methods §N.M": section N.M of the Methods page of the docs (``docs/methods.md``), which derives
each formula. The apps (``kd-probe demo``, ``report``, ``fit``) live in ``kd_probe.apps``, the run folder's file
names in ``kd_probe.io.run_files``.

Example::

    import lightning.pytorch as pl
    from kd_probe import DistillationModule, ShapesDataModule
    from kd_probe.models import VGG, ResNet

    data = ShapesDataModule(num_classes=6)
    teacher = DistillationModule(ResNet(num_classes=6))          # train a teacher from scratch
    pl.Trainer(max_epochs=5).fit(teacher, datamodule=data)
    student = DistillationModule(VGG(num_classes=6), teacher.student)   # then distil it
    pl.Trainer(max_epochs=5).fit(student, datamodule=data)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kd_probe.callbacks import (
        AgreementProbe,
        KnowledgePointProbe,
        ProbeRunner,
        SimilarityProbe,
        UniCAMProbe,
        WeightTrajectoryMonitor,
    )
    from kd_probe.core.knowledge_points import KnowledgePoints, count_knowledge_points
    from kd_probe.core.sigma import SigmaMaps, estimate_sigma_maps
    from kd_probe.core.unicam import UniCAM
    from kd_probe.core.units import ImageGrid, Points, Tokens
    from kd_probe.data import CUB200, ImageMaskFolder, ShapesDataModule
    from kd_probe.metrics import KnowledgePointCount
    from kd_probe.modules import DistillationModule, TwoPhaseResult, run_two_phase

# where each public name lives: imported on first use (PEP 562), so that `kd-probe --help` needs no torch
_PUBLIC = {
    "kd_probe.callbacks": (
        "AgreementProbe",
        "KnowledgePointProbe",
        "ProbeRunner",
        "SimilarityProbe",
        "UniCAMProbe",
        "WeightTrajectoryMonitor",
    ),
    "kd_probe.core.knowledge_points": ("KnowledgePoints", "count_knowledge_points"),
    "kd_probe.core.sigma": ("SigmaMaps", "estimate_sigma_maps"),
    "kd_probe.core.unicam": ("UniCAM",),
    "kd_probe.core.units": ("ImageGrid", "Points", "Tokens"),
    "kd_probe.data": ("CUB200", "ImageMaskFolder", "ShapesDataModule"),
    "kd_probe.metrics": ("KnowledgePointCount",),
    "kd_probe.modules": ("DistillationModule", "TwoPhaseResult", "run_two_phase"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__version__ = "0.2.0"

__all__ = [
    "CUB200",
    "AgreementProbe",
    "DistillationModule",
    "ImageGrid",
    "ImageMaskFolder",
    "KnowledgePointCount",
    "KnowledgePointProbe",
    "KnowledgePoints",
    "Points",
    "ProbeRunner",
    "ShapesDataModule",
    "SigmaMaps",
    "SimilarityProbe",
    "Tokens",
    "TwoPhaseResult",
    "UniCAM",
    "UniCAMProbe",
    "WeightTrajectoryMonitor",
    "__version__",
    "count_knowledge_points",
    "estimate_sigma_maps",
    "run_two_phase",
]


def __getattr__(name: str) -> Any:
    """A public name, or a sub-module (``kd_probe.models``), imported on first use."""
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
