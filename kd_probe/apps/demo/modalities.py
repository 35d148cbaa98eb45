"""What the demo trains and probes for each modality (``kd-probe demo --modality image|text|points``): the data
module, the teacher and student networks, the probed layer and which probes apply ([KP-J] for tokens and
points: knowledge points only; Grad-CAM and UniCAM need images)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from torch import nn

from kd_probe.apps.demo.plan import Plan
from kd_probe.apps.options import POINT_CLASSES

__all__ = ["MODALITIES", "Modality", "modality"]

MODALITIES = ("image", "text", "points")


@dataclass
class Modality:
    """One modality of the demo.

    Attributes:
        name: ``image``, ``text`` or ``points``.
        data: the data module (train/val/test/probe splits; its ``units`` pick the probe's unit type).
        teacher, student: build the networks (the student is also the baseline).
        layer: the student's probed layer (per-unit features), also the mimicked layer of ``--protocol paper``.
        describe_teacher, describe_student: one line each for the console.
        images: whether the image-only probes (agreement, UniCAM) apply.
        noun: what one probe input is called ("images", "sentences", "point clouds").
    """

    name: str
    data: pl.LightningDataModule
    teacher: Callable[[], nn.Module]
    student: Callable[[], nn.Module]
    layer: str
    describe_teacher: str
    describe_student: str
    images: bool
    noun: str


def modality(args: argparse.Namespace, plan: Plan) -> Modality:
    """The demo's modality from ``--modality`` (default ``image``) and the plan's sizes."""
    name = getattr(args, "modality", "image") or "image"
    sizes = (plan.train_size, 64, 64) if args.quick else (plan.train_size, 1000, 1000)
    if name == "text":
        return _text(args, plan, sizes)
    if name == "points":
        return _points(args, plan, sizes)
    return _image(args, plan, sizes)


def _splits(plan: Plan, sizes: tuple[int, int, int]) -> dict[str, Any]:
    return dict(train_size=sizes[0], val_size=sizes[1], test_size=sizes[2], probe_size=plan.probe_images)


def _image(args: argparse.Namespace, plan: Plan, sizes: tuple[int, int, int]) -> Modality:
    from kd_probe.data import ShapesDataModule
    from kd_probe.models import VGG

    classes = args.num_classes or 6
    data = ShapesDataModule(
        num_classes=classes,
        image_size=args.image_size or 32,
        background_bias=args.background_bias,
        batch_size=64,
        seed=args.seed,
        **_splits(plan, sizes),
    )
    return Modality(
        "image",
        data,
        lambda: VGG(classes, widths=plan.teacher_widths, convs_per_stage=2),
        lambda: VGG(classes, widths=plan.student_widths, convs_per_stage=2),
        plan.layer,
        f"VGG{plan.teacher_widths}×2 convs",
        f"VGG{plan.student_widths}×2 convs",
        images=True,
        noun="images",
    )


def _text(args: argparse.Namespace, plan: Plan, sizes: tuple[int, int, int]) -> Modality:
    from kd_probe.data import SentimentDataModule
    from kd_probe.models import TokenTransformer

    data = SentimentDataModule(
        background_bias=args.background_bias, batch_size=64, seed=args.seed, **_splits(plan, sizes)
    )
    small = dict(dim=16 if args.quick else 32, depth=1, heads=2)
    large = small if args.protocol == "paper" else dict(dim=16 if args.quick else 64, depth=2, heads=4)

    def build(shape: dict[str, int]) -> nn.Module:
        return TokenTransformer(data.vocab_size, 2, max_length=data.max_length, pad_id=data.pad_id, **shape)

    return Modality(
        "text",
        data,
        lambda: build(large),
        lambda: build(small),
        f"blocks.{small['depth'] - 1}",
        f"transformer (dim {large['dim']}, {large['depth']} blocks)",
        f"transformer (dim {small['dim']}, {small['depth']} block)",
        images=False,
        noun="sentences",
    )


def _points(args: argparse.Namespace, plan: Plan, sizes: tuple[int, int, int]) -> Modality:
    from kd_probe.data import PointCloudDataModule
    from kd_probe.models import PointNet

    classes = args.num_classes or POINT_CLASSES  # more is refused (check_demo_arguments)
    data = PointCloudDataModule(
        num_classes=classes, background_bias=args.background_bias, batch_size=64, seed=args.seed, **_splits(plan, sizes)
    )
    small = (16, 32, 64) if not args.quick else (8, 16, 16)
    large = small if args.protocol == "paper" else ((32, 64, 128) if not args.quick else (8, 16, 32))
    return Modality(
        "points",
        data,
        lambda: PointNet(classes, widths=large),
        lambda: PointNet(classes, widths=small),
        f"mlp.bn{len(small)}",
        f"PointNet{large}",
        f"PointNet{small}",
        images=False,
        noun="point clouds",
    )
