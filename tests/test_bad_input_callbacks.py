"""Bad input to the probe callbacks: plain arguments are refused at construction, what needs the model at setup
(``probe.setup(trainer, module, "fit")`` with a tiny Trainer, no fit); masks that make ``fg_ratio`` meaningless
are warned about."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, UniCAMProbe, WeightTrajectoryMonitor
from kd_probe.models import VGG
from tests.modules.conftest import tiny_trainer
from tests.test_bad_input import Bad, SharedBlock, bad, check, wrong

IMAGES = torch.randn(4, 3, 16, 16)
MASKS = torch.zeros(4, 16, 16, dtype=torch.bool)
MASKS[:, 2:10, 2:10] = True
LABELS = torch.tensor([0, 1, 2, 0])
UINT8 = (torch.rand(4, 3, 16, 16) * 255).to(torch.uint8)
NAN_IMAGES = IMAGES.clone()
NAN_IMAGES[1, 0, 3, 3] = math.nan


def net(in_channels: int = 3) -> VGG:
    torch.manual_seed(0)
    return VGG(num_classes=3, in_channels=in_channels, widths=(4, 8), convs_per_stage=1)


def setup(probe: Any, student: Any = None, teacher: Any = None, **trainer: Any) -> None:
    """The probe's ``setup`` for fit, on a tiny Trainer and a DistillationModule (no training)."""
    module = DistillationModule(student if student is not None else net(), teacher)
    probe.setup(tiny_trainer(Path("."), **trainer), module, "fit")


# ---------------------------------------------------------------------------------------------- KnowledgePointProbe
def kp(**kw: Any) -> KnowledgePointProbe:
    images, masks = kw.pop("images", IMAGES), kw.pop("masks", MASKS)
    options: dict[str, Any] = dict(layer="features.relu1", grid=4, samples=2, steps=1)
    options.update(kw)
    return KnowledgePointProbe(images, masks, **options)


KNOWLEDGE_POINT_CASES = [
    bad("method-unknown", lambda: kp(method="fast"), ValueError, "method", "fast"),
    bad("passes-faithful", lambda: kp(method="faithful", passes=2), ValueError, "passes", 2),
    bad("passes-0", lambda: kp(method="secant", passes=0), ValueError, "passes", 0),
    bad("patience-0", lambda: kp(patience=0), ValueError, "patience", 0),
    bad("images-list", lambda: kp(images=[1, 2]), ValueError, "images", "list"),
    bad("images-3d", lambda: kp(images=IMAGES[0]), ValueError, "images", IMAGES, "3-D", "(3, 16, 16)"),
    bad("images-uint8", lambda: kp(images=UINT8), ValueError, "images", UINT8, "torch.uint8", "images.float() / 255"),
    bad("images-nan", lambda: kp(images=NAN_IMAGES), ValueError, "images", IMAGES, "NaN", "1 of 4"),
    bad("images-empty", lambda: kp(images=IMAGES[:0], masks=MASKS[:0]), ValueError, "images", IMAGES, "(0, 3, 16, 16)"),
    bad(
        "images-dataset-without-masks",
        lambda: kp(images=TensorDataset(IMAGES, LABELS), masks=None),
        ValueError,
        "images",
        "TensorDataset",
    ),
    bad("masks-none", lambda: kp(masks=None), ValueError, "masks", None),
    bad("masks-shape", lambda: kp(masks=MASKS[:, :8]), ValueError, "masks", MASKS, "(4, 8, 16)", "(4, 3, 16, 16)"),
    bad("masks-count", lambda: kp(masks=MASKS[:3]), ValueError, "masks", MASKS, "(3, 16, 16)"),
    bad("layer-empty", lambda: kp(layer=""), ValueError, "layer", ""),
    bad("layer-int", lambda: kp(layer=3), ValueError, "layer", 3),
    bad("epochs-word", lambda: kp(epochs="all"), ValueError, "epochs", "all"),
    bad("epochs-negative", lambda: kp(epochs=[0, -1]), ValueError, "epochs", [0, -1]),
    bad("epochs-float", lambda: kp(epochs=[1.5]), ValueError, "epochs", [1.5]),
    bad("every-n-epochs-0", lambda: kp(every_n_epochs=0), ValueError, "every_n_epochs", 0),
    bad("name-slash", lambda: kp(name="a/b"), ValueError, "name", "a/b"),
    bad("log-images-negative", lambda: kp(log_images=-1), ValueError, "log_images", -1),
    bad("threshold-nan", lambda: kp(threshold=math.nan), ValueError, "threshold", math.nan),
    bad("threshold-negative", lambda: kp(threshold=-0.1), ValueError, "threshold", -0.1),
    bad("threshold-str", lambda: kp(threshold="0.2"), ValueError, "threshold", "0.2"),
    bad("baseline-unknown", lambda: kp(baseline="median"), ValueError, "baseline", "median"),
    bad("grid-0", lambda: kp(grid=0), ValueError, "grid", 0),
    bad("grid-larger-than-images", lambda: kp(grid=17), ValueError, "grid", 17),
    bad("samples-0", lambda: kp(samples=0), ValueError, "samples", 0),
    bad("samples-str", lambda: kp(samples="4"), ValueError, "samples", "4"),
    bad("steps-0", lambda: kp(steps=0), ValueError, "steps", 0),
    bad("steps-negative", lambda: kp(steps=-5), ValueError, "steps", -5),
    bad("lr-0", lambda: kp(lr=0.0), ValueError, "lr", 0.0),
    bad("lam-negative", lambda: kp(lam=-1.0), ValueError, "lam", -1.0),
    bad("boost-inf", lambda: kp(boost=math.inf), ValueError, "boost", math.inf),
    bad("target-entropy-nan", lambda: kp(target_entropy=math.nan), ValueError, "target_entropy", math.nan),
    bad("seed-negative", lambda: kp(seed=-1), ValueError, "seed", -1),
    bad("max-batch-0", lambda: kp(max_batch=0), ValueError, "max_batch", 0),
    bad("feature-relu-str", lambda: kp(feature_relu="yes"), ValueError, "feature_relu", "yes"),
    bad("sigma-option-unknown", lambda: kp(sample=4), ValueError, "σ options", "sample"),
    # at setup: what needs the model
    bad("setup-layer-unknown", lambda: setup(kp(layer="features.relu9")), ValueError, "layer", "features.relu9"),
    bad("setup-module-unknown", lambda: setup(kp(module="model")), ValueError, "module", "model"),
    bad("setup-layer-shared", lambda: setup(kp(layer="block"), SharedBlock()), ValueError, "layer", "block"),
    bad("setup-layer-never-called", lambda: setup(kp(layer="unused"), SharedBlock()), ValueError, "layer", "unused"),
    bad(
        "setup-images-channels",
        lambda: setup(kp(), net(in_channels=1)),
        ValueError,
        "images",
        IMAGES,
        "(4, 3, 16, 16)",
        "channels",
    ),
    bad(
        "setup-paper-without-max-epochs", lambda: setup(kp(epochs="paper"), max_epochs=-1), ValueError, "max_epochs", -1
    ),
]


# ---------------------------------------------------------------------------------------------- AgreementProbe
def ag(**kw: Any) -> AgreementProbe:
    images, labels = kw.pop("images", IMAGES), kw.pop("labels", LABELS)
    options: dict[str, Any] = dict(teacher_layer="features.relu2", student_layer="features.relu2")
    options.update(kw)
    return AgreementProbe(images, labels, **options)


AGREEMENT_CASES = [
    bad("labels-none", lambda: ag(labels=None), ValueError, "labels", None),
    bad("labels-count", lambda: ag(labels=LABELS[:3]), ValueError, "labels", LABELS, "(3,)"),
    bad("labels-float", lambda: ag(labels=LABELS.float()), ValueError, "labels", LABELS, "torch.float32"),
    bad("labels-negative", lambda: ag(labels=torch.tensor([0, -1, 1, 2])), ValueError, "labels", LABELS, "-1"),
    bad("images-uint8", lambda: ag(images=UINT8), ValueError, "images", UINT8, "torch.uint8", "/ 255"),
    bad("steps-0", lambda: ag(steps=0), ValueError, "steps", 0),
    bad("prefix-tokens-bool", lambda: ag(prefix_tokens=True), ValueError, "prefix_tokens", True),
    bad("steps-str", lambda: ag(steps="5"), ValueError, "steps", "5"),
    bad("eps-negative", lambda: ag(eps=-0.1), ValueError, "eps", -0.1),
    bad("eps-nan", lambda: ag(eps=math.nan), ValueError, "eps", math.nan),
    bad("eps-inf", lambda: ag(eps=math.inf), ValueError, "eps", math.inf),
    bad("eps-bool", lambda: ag(eps=True), ValueError, "eps", True),
    bad("every-n-epochs-0", lambda: ag(every_n_epochs=0), ValueError, "every_n_epochs", 0),
    bad("transforms-unknown", lambda: ag(transforms=["blur"]), ValueError, "transforms", "blur"),
    bad("transforms-string", lambda: ag(transforms="color"), ValueError, "transforms", "color"),
    bad(
        "normalization-channels",
        lambda: ag(normalization=([0.5] * 2, [0.25] * 2)),
        ValueError,
        "normalization",
        ([0.5] * 2, [0.25] * 2),
    ),
    bad(
        "normalization-std-0",
        lambda: ag(normalization=([0.5] * 3, [0.0] * 3)),
        ValueError,
        "normalization",
        ([0.5] * 3, [0.0] * 3),
    ),
    bad("normalization-one-part", lambda: ag(normalization=([0.5] * 3,)), ValueError, "normalization", ([0.5] * 3,)),
    bad("log-images-negative", lambda: ag(log_images=-1), ValueError, "log_images", -1),
    bad("seed-str", lambda: ag(seed="0"), ValueError, "seed", "0"),
    bad("reference-str", lambda: ag(reference="resnet"), ValueError, "reference", "str"),
    # at setup
    bad("setup-teacher-role", lambda: setup(ag(teacher="teachr"), teacher=net()), ValueError, "teacher", "teachr"),
    bad(
        "setup-teacher-layer-unknown",
        lambda: setup(ag(teacher_layer="features.relu7"), teacher=net()),
        ValueError,
        "teacher_layer",
        "features.relu7",
    ),
    bad(
        "setup-student-layer-not-conv",
        lambda: setup(ag(student_layer="head.fc"), teacher=net()),
        ValueError,
        "student_layer",
        "head.fc",
    ),
    bad(
        "setup-student-layer-never-called",
        lambda: setup(ag(student_layer="unused"), SharedBlock(), net()),
        ValueError,
        "student_layer",
        "unused",
    ),
    bad(
        "setup-labels-outside-classes",
        lambda: setup(ag(labels=torch.tensor([0, 1, 2, 5])), teacher=net()),
        ValueError,
        "labels",
        LABELS,
        "[5]",
        "3 classes",
    ),
    bad(
        "setup-images-channels",
        lambda: setup(ag(), net(in_channels=1), net(in_channels=1)),
        ValueError,
        "images",
        IMAGES,
        "(4, 3, 16, 16)",
        "channels",
    ),
    bad(
        "setup-reference-layer",
        lambda: setup(ag(reference=SharedBlock()), teacher=net()),
        ValueError,
        "student_layer",
        "features.relu2",
    ),
]


# ---------------------------------------------------------------------------------------------- UniCAMProbe
def up(**kw: Any) -> UniCAMProbe:
    images, labels = kw.pop("images", IMAGES), kw.pop("labels", LABELS)
    options: dict[str, Any] = dict(layers=["features.relu2"], cam_layer="features.relu2")
    options.update(kw)
    return UniCAMProbe(images, labels, **options)


UNICAM_CASES = [
    bad("prefix-tokens-negative", lambda: up(prefix_tokens=-2), ValueError, "prefix_tokens", -2),
    bad("images-3", lambda: up(images=IMAGES[:3], labels=LABELS[:3]), ValueError, "images", IMAGES, "3 probe images"),
    bad("images-uint8", lambda: up(images=UINT8), ValueError, "images", UINT8, "torch.uint8", "/ 255"),
    bad(
        "labels-one-class",
        lambda: up(labels=torch.zeros(4, dtype=torch.long)),
        ValueError,
        "labels",
        LABELS,
        "single class",
    ),
    bad("labels-float", lambda: up(labels=LABELS.float()), ValueError, "labels", LABELS, "torch.float32"),
    bad("layers-empty", lambda: up(layers=[]), ValueError, "layers", []),
    bad("layers-one-name-tuple", lambda: up(layers=[("features.relu2",)]), ValueError, "layers", ("features.relu2",)),
    bad("cam-layer-int", lambda: up(cam_layer=3), ValueError, "cam_layer", 3),
    bad("cam-layer-triple", lambda: up(cam_layer=("a", "b", "c")), ValueError, "cam_layer", ("a", "b", "c")),
    bad("every-n-epochs-0", lambda: up(every_n_epochs=0), ValueError, "every_n_epochs", 0),
    bad("objective-unknown", lambda: up(objective="max"), ValueError, "objective", "max"),
    bad("features-unknown", lambda: up(features="mean"), ValueError, "features", "mean"),
    bad("normalize-rows-str", lambda: up(normalize_rows=wrong("yes")), ValueError, "normalize_rows", "yes"),
    bad("log-images-negative", lambda: up(log_images=-2), ValueError, "log_images", -2),
    bad("reference-str", lambda: up(reference="resnet"), ValueError, "reference", "str"),
    bad(
        "label-embeddings-rows",
        lambda: up(label_embeddings=torch.zeros(2, 4)),
        ValueError,
        "label_embeddings",
        LABELS,
        "2 rows",
    ),
    bad(
        "normalization-channels",
        lambda: up(normalization=([0.5], [0.2, 0.2])),
        ValueError,
        "normalization",
        ([0.5], [0.2, 0.2]),
    ),
    # at setup
    bad(
        "setup-layers-unknown",
        lambda: setup(up(layers=["features.relu5"]), teacher=net()),
        ValueError,
        "layers",
        "features.relu5",
    ),
    bad(
        "setup-cam-layer-not-conv",
        lambda: setup(up(cam_layer="head.fc"), teacher=net()),
        ValueError,
        "cam_layer",
        "head.fc",
    ),
    bad("setup-student-role", lambda: setup(up(student="pupil"), teacher=net()), ValueError, "student", "pupil"),
    bad(
        "setup-images-channels",
        lambda: setup(up(), net(in_channels=1), net(in_channels=1)),
        ValueError,
        "images",
        IMAGES,
        "(4, 3, 16, 16)",
        "channels",
    ),
]

# ---------------------------------------------------------------------------------------------- WeightTrajectoryMonitor
WEIGHT_CASES = [
    bad(
        "modules-string", lambda: WeightTrajectoryMonitor(modules=wrong("features")), ValueError, "modules", "features"
    ),
    bad("every-n-steps-0", lambda: WeightTrajectoryMonitor(every_n_steps=0), ValueError, "every_n_steps", 0),
    bad("projection-0", lambda: WeightTrajectoryMonitor(projection=0), ValueError, "projection", 0),
    bad(
        "setup-modules-unknown",
        lambda: setup(WeightTrajectoryMonitor(modules=["features.conv9"])),
        ValueError,
        "modules",
        "features.conv9",
    ),
]


@pytest.mark.parametrize("case", KNOWLEDGE_POINT_CASES)
def test_knowledge_point_probe(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", AGREEMENT_CASES)
def test_agreement_probe(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", UNICAM_CASES)
def test_unicam_probe(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", WEIGHT_CASES)
def test_weight_trajectory_monitor(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize(
    ("region", "what"),
    [(slice(None), "all foreground"), (slice(0, 0), "all background")],
    ids=["all-foreground", "all-background"],
)
def test_uninformative_masks_are_warned_about(region: slice, what: str) -> None:
    masks = MASKS.clone()
    masks[1:3] = False
    masks[1:3, region, region] = True
    with pytest.warns(UserWarning, match=rf"`masks` of 2 of 4 probe images \(indices \[1, 2\]\) are {what}"):
        kp(masks=masks)
