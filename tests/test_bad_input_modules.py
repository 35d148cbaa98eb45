"""Bad input to ``DistillationModule``, ``run_two_phase``, the data (``ShapesDataModule``, ``ImageMaskFolder``,
``CUB200``) and ``KnowledgePointCount``: the exception type, and a message naming the argument and the value."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kd_probe import CUB200, DistillationModule, ImageMaskFolder, KnowledgePointCount, ShapesDataModule, run_two_phase
from kd_probe.data import generate_shapes
from kd_probe.models import VGG
from tests.test_bad_input import Bad, bad, check, wrong


def student() -> VGG:
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)


def teacher() -> VGG:
    return VGG(num_classes=3, widths=(8, 8), convs_per_stage=1)


def module(**kw: Any) -> DistillationModule:
    return DistillationModule(student(), kw.pop("teacher", teacher()), **kw)


def data(**kw: Any) -> ShapesDataModule:
    options: dict[str, Any] = dict(num_classes=3, image_size=16, train_size=8, val_size=8, test_size=8, probe_size=4)
    options.update(kw)
    return ShapesDataModule(**options)


def two_phase(**kw: Any) -> object:
    network = kw.pop("teacher", teacher())
    options: dict[str, Any] = dict(layer="features.bn2", mimic_epochs=1, head_epochs=1, datamodule=data())
    options.update(kw)
    return run_two_phase(student(), network, **options)


NAN, INF = math.nan, math.inf


def with_option(name: str, value: object) -> Callable[[], object]:
    return lambda: module(**{name: value})


# ---------------------------------------------------------------------------------------------- DistillationModule
NUMBERS = [  # (argument, value): every loss weight and optimiser setting, NaN, inf, negative, a bool, a string
    *[("temperature", v) for v in (NAN, INF, -INF, -1.0, 0.0, True, "4")],
    *[(name, v) for name in ("kd_weight", "ce_weight", "feature_weight") for v in (NAN, INF, -0.5, True, "1")],
    *[("lr", v) for v in (NAN, INF, 0.0, -0.1, True, "0.1")],
    *[("weight_decay", v) for v in (NAN, INF, -1e-4, False)],
    *[("momentum", v) for v in (NAN, INF, -0.1, 1.0, False)],
    *[("gamma", v) for v in (NAN, 0.0, 1.5)],
]
MODULE_CASES = [
    *[bad(f"{name}-{value!r}", with_option(name, value), ValueError, name, value) for name, value in NUMBERS],
    bad("milestones-above-1", lambda: module(milestones=(0.5, 1.5)), ValueError, "milestones", (0.5, 1.5)),
    bad("milestones-decreasing", lambda: module(milestones=(0.75, 0.5)), ValueError, "milestones", (0.75, 0.5)),
    bad("milestones-number", lambda: module(milestones=0.5), ValueError, "milestones", 0.5),
    bad("optimizer-unknown", lambda: module(optimizer="adam"), ValueError, "optimizer", "adam"),
    bad("schedule-unknown", lambda: module(schedule="linear"), ValueError, "schedule", "linear"),
    bad("stage-unknown", lambda: module(stage="train"), ValueError, "stage", "train"),
    bad("feature-resize-unknown", lambda: module(feature_resize="nearest"), ValueError, "feature_resize", "nearest"),
    bad("student-str", lambda: DistillationModule("vgg"), ValueError, "student", "str"),  # type: ignore[arg-type]
    bad("teacher-int", lambda: module(teacher=3), ValueError, "teacher", "int"),
    bad(
        "feature-pairs-unknown-lists-close",
        lambda: module(feature_pairs="features.relu"),
        ValueError,
        "features.relu1",
        "features.relu",
    ),
    bad(
        "feature-pairs-teacher-unknown",
        lambda: module(feature_pairs={"features.relu1": "features.relu7"}),
        ValueError,
        "feature_pairs",
        "features.relu7",
    ),
    bad(
        "feature-pairs-without-teacher",
        lambda: module(teacher=None, feature_pairs="features.relu1"),
        ValueError,
        "feature_pairs",
        "features.relu1",
    ),
    bad(
        "feature-pairs-list",
        lambda: module(feature_pairs=["features.relu1"]),
        ValueError,
        "feature_pairs",
        ["features.relu1"],
    ),
    bad(
        "mimic-two-pairs",
        lambda: module(
            stage="mimic", feature_pairs={"features.relu1": "features.relu1", "features.relu2": "features.relu2"}
        ),
        ValueError,
        "feature_pairs",
        "features.relu2",
    ),
    bad("mimic-without-teacher", lambda: module(teacher=None, stage="mimic"), ValueError, "teacher", None),
    bad(
        "head-without-freeze-through", lambda: module(teacher=None, stage="head"), ValueError, "freeze_through", "head"
    ),
    bad(
        "freeze-through-unknown",
        lambda: module(teacher=None, stage="head", freeze_through="features.bn3"),
        ValueError,
        "freeze_through",
        "features.bn3",
    ),
    bad(
        "freeze-through-with-distill",
        lambda: module(freeze_through="features.bn1"),
        ValueError,
        "freeze_through",
        "features.bn1",
    ),
    bad("num-classes-0", lambda: module(num_classes=0), ValueError, "num_classes", 0),
    bad("num-classes-negative", lambda: module(num_classes=-3), ValueError, "num_classes", -3),
    bad("num-classes-float", lambda: module(num_classes=3.0), ValueError, "num_classes", 3.0),
    bad(
        "example-input-channels",
        lambda: module(feature_pairs="features.relu1", example_input=(1, 16, 16)),
        ValueError,
        "example_input",
        (1, 16, 16),
    ),
    bad(
        "example-input-str",
        lambda: module(feature_pairs="features.relu1", example_input="3x16x16"),
        ValueError,
        "example_input",
        "3x16x16",
    ),
    bad(
        "example-input-uint8",
        lambda: module(feature_pairs="features.relu1", example_input=torch.zeros(2, 3, 16, 16, dtype=torch.uint8)),
        ValueError,
        "example_input",
        torch.zeros(1),
        "torch.uint8",
    ),
    bad("checkpoint-teacher-str", lambda: module(checkpoint_teacher="yes"), ValueError, "checkpoint_teacher", "yes"),
]

# ---------------------------------------------------------------------------------------------- run_two_phase
TWO_PHASE_CASES = [
    bad("layer-unknown", lambda: two_phase(layer="features.bn9"), ValueError, "layer", "features.bn9"),
    bad(
        "teacher-layer-unknown",
        lambda: two_phase(teacher_layer="features.bn0"),
        ValueError,
        "teacher_layer",
        "features.bn0",
    ),
    bad("teacher-none", lambda: two_phase(teacher=None), ValueError, "teacher", None),
    bad("mimic-epochs-0", lambda: two_phase(mimic_epochs=0), ValueError, "mimic_epochs", 0),
    bad("mimic-epochs-negative", lambda: two_phase(mimic_epochs=-1), ValueError, "mimic_epochs", -1),
    bad("head-epochs-float", lambda: two_phase(head_epochs=2.5), ValueError, "head_epochs", 2.5),
    bad(
        "datamodule-loader",
        lambda: two_phase(datamodule=DataLoader(TensorDataset(torch.zeros(1)))),
        ValueError,
        "datamodule",
        "DataLoader",
    ),
    bad("module-option-unknown", lambda: two_phase(temprature=4.0), ValueError, "module_options", "temprature"),
    bad(
        "mimic-option-unknown", lambda: two_phase(mimic_options={"stage": "head"}), ValueError, "mimic_options", "stage"
    ),
    bad("head-option-bad-lr", lambda: two_phase(head_options={"lr": INF}), ValueError, "lr", INF),
]

# ---------------------------------------------------------------------------------------------- the built-in data
SHAPES_CASES = [
    bad("num-classes-1", lambda: data(num_classes=1), ValueError, "num_classes", 1),
    bad("num-classes-9", lambda: data(num_classes=9), ValueError, "num_classes", 9),
    bad("num-classes-str", lambda: data(num_classes="6"), ValueError, "num_classes", "6"),
    bad("image-size-4", lambda: data(image_size=4), ValueError, "image_size", 4),
    bad("image-size-float", lambda: data(image_size=16.0), ValueError, "image_size", 16.0),
    bad("train-size-negative", lambda: data(train_size=-1), ValueError, "train_size", -1),
    bad("val-size-float", lambda: data(val_size=1.5), ValueError, "val_size", 1.5),
    bad("probe-size-negative", lambda: data(probe_size=-4), ValueError, "probe_size", -4),
    bad("background-bias-above-1", lambda: data(background_bias=1.5), ValueError, "background_bias", 1.5),
    bad("background-bias-nan", lambda: data(background_bias=NAN), ValueError, "background_bias", NAN),
    bad("background-bias-str", lambda: data(background_bias="high"), ValueError, "background_bias", "high"),
    bad("batch-size-0", lambda: data(batch_size=0), ValueError, "batch_size", 0),
    bad("num-workers-negative", lambda: data(num_workers=-1), ValueError, "num_workers", -1),
    bad("seed-negative", lambda: data(seed=-1), ValueError, "seed", -1),
    bad("seed-str", lambda: data(seed="0"), ValueError, "seed", "0"),
    bad("generate-count-negative", lambda: generate_shapes(-1), ValueError, "count", -1),
    bad("generate-seed-negative", lambda: generate_shapes(2, seed=-5), ValueError, "seed", -5),
    bad("generate-stream-negative", lambda: generate_shapes(2, stream=-1), ValueError, "stream", -1),
]


# ---------------------------------------------------------------------------------------------- files on disk
def files(*paths: str, text: str = "") -> list[Path]:
    """Create files (relative to the test's scratch folder); images are never decoded at construction."""
    for path in paths:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return [Path(path) for path in paths]


def folder(**kw: Any) -> ImageMaskFolder:
    files("images/cat/a.png", "masks/cat/a.png")
    return ImageMaskFolder(kw.pop("images", "images"), kw.pop("masks", "masks"), **kw)


def empty_folders() -> ImageMaskFolder:
    Path("images").mkdir()
    Path("masks").mkdir()
    return ImageMaskFolder("images", "masks")


def cub(lines: dict[str, str] | None = None, **kw: Any) -> CUB200:
    tables = {
        "images.txt": "1 001.Albatross/a.jpg\n2 002.Auklet/b.jpg\n",
        "image_class_labels.txt": "1 1\n2 2\n",
        "train_test_split.txt": "1 1\n2 0\n",
        "bounding_boxes.txt": "1 0 0 4 4\n2 1 1 2 2\n",
    }
    tables.update(lines or {})
    for name, text in tables.items():
        files(f"CUB/{name}", text=text)
    return CUB200("CUB", **kw)


FILE_CASES = [
    bad("folder-images-missing", lambda: ImageMaskFolder("no_images", "masks"), ValueError, "images", "no_images"),
    bad("folder-masks-missing", lambda: folder(masks="no_masks"), ValueError, "masks", "no_masks"),
    bad("folder-no-classes", empty_folders, ValueError, "images", "images"),
    bad("folder-mask-missing", lambda: (files("images/dog/b.jpg"), folder()), ValueError, "masks", "masks"),
    bad(
        "folder-no-image-files",
        lambda: (files("images/cat/readme.txt", "masks/x.png"), ImageMaskFolder("images", "masks")),
        ValueError,
        "images",
        "images",
    ),
    bad("folder-image-size-4", lambda: folder(image_size=4), ValueError, "image_size", 4),
    bad("folder-mean-two", lambda: folder(mean=(0.5, 0.5)), ValueError, "mean", (0.5, 0.5)),
    bad("folder-std-zero", lambda: folder(std=(0.2, 0.0, 0.2)), ValueError, "std", (0.2, 0.0, 0.2)),
    bad("folder-mask-threshold-above-1", lambda: folder(mask_threshold=1.5), ValueError, "mask_threshold", 1.5),
    bad("folder-mask-threshold-nan", lambda: folder(mask_threshold=NAN), ValueError, "mask_threshold", NAN),
    bad("cub-root-missing", lambda: CUB200("no_cub"), ValueError, "root", "no_cub"),
    bad("cub-split", lambda: cub(split="val"), ValueError, "split", "val"),
    bad("cub-mask-source", lambda: cub(mask_source="mask"), ValueError, "mask_source", "mask"),
    bad("cub-image-size-0", lambda: cub(image_size=0), ValueError, "image_size", 0),
    bad("cub-mask-threshold-negative", lambda: cub(mask_threshold=-0.5), ValueError, "mask_threshold", -0.5),
    bad(
        "cub-malformed-line", lambda: cub({"images.txt": "one 001/a.jpg\n"}), ValueError, "images.txt", "one 001/a.jpg"
    ),
    bad("cub-label-0", lambda: cub({"image_class_labels.txt": "1 0\n2 2\n"}), ValueError, "image_class_labels.txt", 0),
    bad(
        "cub-id-without-label",
        lambda: cub({"image_class_labels.txt": "1 1\n"}),
        ValueError,
        "image_class_labels.txt",
        2,
    ),
    bad("cub-segmentation-missing", lambda: cub(mask_source="segmentation"), ValueError, "mask_source", "segmentation"),
]

# ---------------------------------------------------------------------------------------------- KnowledgePointCount
ENTROPY = torch.full((2, 4, 4), -3.0)
MASKS = torch.zeros(2, 8, 8, dtype=torch.bool)


def update(*args: Any, **kw: Any) -> None:
    KnowledgePointCount().update(*args, **kw)


def mixed_indices() -> None:
    metric = KnowledgePointCount()
    metric.update(ENTROPY, MASKS, indices=torch.tensor([0, 1]))
    metric.update(ENTROPY, MASKS)


METRIC_CASES = [
    bad("threshold-nan", lambda: KnowledgePointCount(threshold=NAN), ValueError, "threshold", NAN),
    bad("threshold-negative", lambda: KnowledgePointCount(threshold=-0.2), ValueError, "threshold", -0.2),
    bad("threshold-str", lambda: KnowledgePointCount(threshold=wrong("0.2")), ValueError, "threshold", "0.2"),
    bad("baseline-unknown", lambda: KnowledgePointCount(baseline="median"), ValueError, "baseline", "median"),
    bad("baseline-bool", lambda: KnowledgePointCount(baseline=False), ValueError, "baseline", False),
    bad("update-entropy-2d", lambda: update(ENTROPY[0], MASKS), ValueError, "entropy", ENTROPY, "(4, 4)"),
    bad("update-entropy-int", lambda: update(ENTROPY.long(), MASKS), ValueError, "entropy", ENTROPY, "torch.int64"),
    bad("update-entropy-list", lambda: update([[0.0]], MASKS), ValueError, "entropy", "list"),
    bad("update-mask-count", lambda: update(ENTROPY, MASKS[:1]), ValueError, "fg_mask", MASKS, "(1, 8, 8)"),
    bad("update-mask-list", lambda: update(ENTROPY, [[0]]), ValueError, "fg_mask", "list"),
    bad(
        "update-effective-shape",
        lambda: update(ENTROPY, MASKS, effective=torch.ones(3)),
        ValueError,
        "effective",
        ENTROPY,
        "(3,)",
    ),
    bad(
        "update-indices-count",
        lambda: update(ENTROPY, MASKS, indices=torch.tensor([0, 1, 2])),
        ValueError,
        "indices",
        ENTROPY,
        "(3,)",
    ),
    bad("update-indices-some", mixed_indices, ValueError, "indices", None),
]


@pytest.mark.parametrize("case", MODULE_CASES)
def test_distillation_module(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", TWO_PHASE_CASES)
def test_run_two_phase(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", SHAPES_CASES)
def test_shapes_data(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", FILE_CASES)
def test_folders_and_cub(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", METRIC_CASES)
def test_knowledge_point_count(case: Bad) -> None:
    check(case)
