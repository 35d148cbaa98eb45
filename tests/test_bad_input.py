"""Bad input to the pure-torch API (``kd_probe.functional``, σ maps, knowledge points, UniCAM) and the CLI.

Every case asserts the exception type and that the message is one clear sentence naming the argument and the
value given (a tensor: its shape or dtype). The helpers here are shared by ``test_bad_input_*.py``.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from kd_probe import UniCAM, count_knowledge_points, estimate_sigma_maps
from kd_probe import functional as KF
from kd_probe.apps.cli import main
from kd_probe.core.distance_correlation import correlation_of_distances, distance_matrix, relevance_given_of_distances
from kd_probe.models import VGG


class Bad(NamedTuple):
    """One bad-input case: ``call()`` raises ``error`` whose message names ``argument`` and ``value``."""

    call: Callable[[], object]
    error: type[BaseException]
    argument: str
    value: object
    shows: tuple[str, ...] = ()  # only for a tensor value: what the message says of its shape/dtype


def bad(
    case_id: str, call: Callable[[], object], error: type[BaseException], argument: str, value: object, *shows: str
) -> Any:
    """A ``pytest.param`` of one case, with a readable id."""
    if shows and not isinstance(value, Tensor):
        raise AssertionError(f"{case_id}: `shows` is only for tensor values")
    return pytest.param(Bad(call, error, argument, value, shows), id=case_id)


def wrong(value: object) -> Any:
    """A deliberately wrong value (typed ``Any`` so that the type checker lets the case through)."""
    return value


def assert_names(message: str, argument: str, value: object, shows: Sequence[str] = ()) -> None:
    """The message names the argument and the value given (``repr`` or ``str``); a tensor by its shape/dtype."""
    assert argument in message, f"the message does not name {argument!r}: {message}"
    if isinstance(value, Tensor):
        assert shows, "a tensor value needs the shape/dtype the message must show"
        missing = [text for text in shows if text not in message]
        assert not missing, f"the message does not show {missing} of the tensor: {message}"
    else:
        assert repr(value) in message or str(value) in message, f"the message does not name {value!r}: {message}"


def check(case: Bad) -> None:
    with pytest.raises(case.error) as info:
        case.call()
    assert_names(str(info.value), case.argument, case.value, case.shows)


class CommandLineError(Exception):
    """What ``kd-probe`` wrote on stderr when it exited with status 2."""


def cli(*argv: str) -> None:
    """Run ``kd-probe ARGV``; raise :class:`CommandLineError` with stderr when it exits with status 2."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code: object = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    if code == 2:
        raise CommandLineError(stderr.getvalue())
    raise AssertionError(f"kd-probe {' '.join(argv)} exited with {code!r}, not 2")


# ---------------------------------------------------------------------------------------------- tiny inputs
def net() -> VGG:
    torch.manual_seed(0)
    return VGG(num_classes=3, widths=(4, 8), convs_per_stage=1)


class SharedBlock(nn.Module):
    """A network that calls ``block`` twice in its forward (a shared module)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Conv2d(4, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.block(self.stem(x))))


IMAGES = torch.randn(4, 3, 8, 8)
ENTROPY = torch.full((2, 4, 4), -3.0)
MASKS = torch.zeros(2, 8, 8, dtype=torch.bool)
MASKS[:, :4, :4] = True
LABELS = torch.tensor([0, 1, 2, 0])
GENERATOR = torch.Generator().manual_seed(0)
UINT8 = (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8)
NAN_IMAGES = IMAGES.clone()
NAN_IMAGES[0, 0, 0, 0] = math.nan


def sigma(images: Any = IMAGES[:2], model: nn.Module | None = None, **kw: Any) -> object:
    options = dict(layer="features.relu1", grid=4, samples=2, steps=1)
    options.update(kw)
    return estimate_sigma_maps(model or net(), images, **options)  # type: ignore[arg-type]


def points(entropy: Any = ENTROPY, mask: Any = MASKS, **kw: Any) -> object:
    return count_knowledge_points(entropy, mask, **kw)


# ---------------------------------------------------------------------------------------------- σ maps
SIGMA_CASES = [
    bad("images-3d", lambda: sigma(IMAGES[0]), ValueError, "images", IMAGES[0], "3-D", "(3, 8, 8)"),
    bad("images-uint8", lambda: sigma(UINT8), ValueError, "images", UINT8, "torch.uint8", "/ 255"),
    bad("images-list", lambda: sigma([[0.0]]), ValueError, "images", "list"),
    bad("images-nan", lambda: sigma(NAN_IMAGES[:2]), ValueError, "images", NAN_IMAGES, "NaN", "1 of 2"),
    bad("grid-0", lambda: sigma(grid=0), ValueError, "grid", 0),
    bad("grid-larger-than-image", lambda: sigma(grid=9), ValueError, "grid", 9),
    bad("grid-float", lambda: sigma(grid=4.0), ValueError, "grid", 4.0),
    bad("samples-0", lambda: sigma(samples=0), ValueError, "samples", 0),
    bad("samples-bool", lambda: sigma(samples=True), ValueError, "samples", True),
    bad("steps-0", lambda: sigma(steps=0), ValueError, "steps", 0),
    bad("steps-negative", lambda: sigma(steps=-3), ValueError, "steps", -3),
    bad("lr-0", lambda: sigma(lr=0.0), ValueError, "lr", 0.0),
    bad("lr-nan", lambda: sigma(lr=math.nan), ValueError, "lr", math.nan),
    bad("lr-inf", lambda: sigma(lr=math.inf), ValueError, "lr", math.inf),
    bad("lam-negative", lambda: sigma(lam=-1.0), ValueError, "lam", -1.0),
    bad("lam-nan", lambda: sigma(lam=math.nan), ValueError, "lam", math.nan),
    bad("target-entropy-nan", lambda: sigma(target_entropy=math.nan), ValueError, "target_entropy", math.nan),
    bad("target-entropy-str", lambda: sigma(target_entropy="-2.8"), ValueError, "target_entropy", "-2.8"),
    bad("boost-0", lambda: sigma(boost=0.0), ValueError, "boost", 0.0),
    bad("seed-negative", lambda: sigma(seed=-1), ValueError, "seed", -1),
    bad("max-batch-0", lambda: sigma(max_batch=0), ValueError, "max_batch", 0),
    bad("indices-too-few", lambda: sigma(indices=[0]), ValueError, "indices", [0]),
    bad("indices-negative", lambda: sigma(indices=[0, -1]), ValueError, "indices", [0, -1]),
    bad("layer-unknown", lambda: sigma(layer="features.relu9"), ValueError, "layer", "features.relu9"),
    bad("layer-empty", lambda: sigma(layer=""), ValueError, "layer", ""),
    bad("layer-not-run", lambda: sigma(model=SharedBlock(), layer="unused"), ValueError, "layer", "unused"),
    bad("cat-empty", lambda: KF.SigmaMaps.cat([]), ValueError, "parts", "SigmaMaps"),
    bad("image-generator-seed-negative", lambda: KF.image_generator(-1, 0), ValueError, "seed", -1),
]


# ---------------------------------------------------------------------------------------------- knowledge points
POINTS_CASES = [
    bad("entropy-2d", lambda: points(ENTROPY[0]), ValueError, "entropy", ENTROPY[0], "(4, 4)"),
    bad("entropy-int", lambda: points(ENTROPY.long()), ValueError, "entropy", ENTROPY, "torch.int64"),
    bad("entropy-list", lambda: points([[0.0]]), ValueError, "entropy", "list"),
    bad("entropy-not-square", lambda: points(torch.zeros(2, 4, 2)), ValueError, "entropy", ENTROPY, "(2, 4, 2)"),
    bad("mask-count", lambda: points(mask=MASKS[:1]), ValueError, "fg_mask", MASKS, "(1, 8, 8)", "(2, 4, 4)"),
    bad("mask-list", lambda: points(mask=[[1]]), ValueError, "fg_mask", "list"),
    bad("mask-smaller-than-grid", lambda: points(mask=MASKS[:, :2, :2]), ValueError, "fg_mask", MASKS, "2×2"),
    bad("mask-channels", lambda: points(mask=torch.zeros(2, 3, 8, 8)), ValueError, "fg_mask", MASKS, "(2, 3, 8, 8)"),
    bad("threshold-nan", lambda: points(threshold=math.nan), ValueError, "threshold", math.nan),
    bad("threshold-negative", lambda: points(threshold=-0.1), ValueError, "threshold", -0.1),
    bad("threshold-str", lambda: points(threshold="0.2"), ValueError, "threshold", "0.2"),
    bad("threshold-bool", lambda: points(threshold=True), ValueError, "threshold", True),
    bad("baseline-unknown", lambda: points(baseline="median"), ValueError, "baseline", "median"),
    bad("baseline-inf", lambda: points(baseline=math.inf), ValueError, "baseline", math.inf),
    bad("baseline-bool", lambda: points(baseline=True), ValueError, "baseline", True),
    bad(
        "effective-shape",
        lambda: points(effective=torch.ones(3, dtype=torch.bool)),
        ValueError,
        "effective",
        ENTROPY,
        "(3,)",
    ),
    bad("effective-list", lambda: points(effective=[True, True]), ValueError, "effective", "list"),
    bad("downsample-2d", lambda: KF.downsample_mask(MASKS[0], 4), ValueError, "fg_mask", MASKS, "(8, 8)"),
    bad("downsample-grid-0", lambda: KF.downsample_mask(MASKS, 0), ValueError, "grid", 0),
    bad(
        "background-baseline-unknown",
        lambda: KF.background_baseline(ENTROPY, MASKS[:, :4, :4], baseline="mean"),
        ValueError,
        "baseline",
        "mean",
    ),
    bad(
        "foreground-ratio-counts",
        lambda: KF.foreground_ratio(torch.ones(3), torch.ones(2)),
        ValueError,
        "n_bg",
        ENTROPY,
        "(3,)",
        "(2,)",
    ),
    bad(
        "effective-images-shapes",
        lambda: KF.effective_images(torch.ones(2, 3), torch.zeros(2, 2, 4, 4), MASKS, late=[False, True]),
        ValueError,
        "sigma_f",
        ENTROPY,
        "(2, 3)",
        "(2, 2, 4, 4)",
    ),
    bad(
        "effective-images-late",
        lambda: KF.effective_images(torch.ones(2, 2), torch.zeros(2, 2, 4, 4), MASKS, late=[True]),
        ValueError,
        "late",
        ENTROPY,
        "(1,)",
    ),
]


# ---------------------------------------------------------------------------------------------- learning dynamics
DYNAMICS_CASES = [
    bad(
        "learning-speed-shapes",
        lambda: KF.learning_speed(torch.zeros(3, 2), torch.zeros(2)),
        ValueError,
        "distances",
        ENTROPY,
        "(3, 2)",
        "(2,)",
    ),
    bad("stability-2d", lambda: KF.stability(torch.zeros(2, 4)), ValueError, "points_history", ENTROPY, "(2, 4)"),
    bad(
        "stability-mask-shape",
        lambda: KF.stability(torch.zeros(2, 3, 4, 4), torch.zeros(3, 2, 2)),
        ValueError,
        "fg_mask",
        ENTROPY,
        "(3, 2, 2)",
        "(3, 4, 4)",
    ),
    bad("cosine-sizes", lambda: KF.cosine(torch.zeros(3), torch.zeros(4)), ValueError, "b", ENTROPY, "3", "4"),
    bad(
        "normalised-step-shapes",
        lambda: KF.normalised_step(torch.zeros(3), torch.zeros(4), 1.0),
        ValueError,
        "current",
        ENTROPY,
        "(3,)",
        "(4,)",
    ),
    bad(
        "normalised-step-norm-negative",
        lambda: KF.normalised_step(torch.zeros(3), torch.zeros(3), -1.0),
        ValueError,
        "initial_norm",
        -1.0,
    ),
    bad(
        "normalised-step-norm-nan",
        lambda: KF.normalised_step(torch.zeros(3), torch.zeros(3), math.nan),
        ValueError,
        "initial_norm",
        math.nan,
    ),
    bad("path-efficiency-negative", lambda: KF.path_efficiency(1.0, -2.0), ValueError, "path_length", -2.0),
    bad("path-efficiency-nan", lambda: KF.path_efficiency(math.nan, 2.0), ValueError, "displacement_norm", math.nan),
]


# ---------------------------------------------------------------------------------------------- layers, losses, batches
LAYER_CASES = [
    bad(
        "resolve-unknown-lists-close",
        lambda: KF.resolve_layer(net(), "features.rel1"),
        ValueError,
        "features.relu1",
        "features.rel1",
    ),
    bad("resolve-not-a-name", lambda: KF.resolve_layer(net(), 3), ValueError, "layer", 3),  # type: ignore[arg-type]
    bad(
        "resolve-argument-named",
        lambda: KF.resolve_layer(net(), "conv9", argument="student_layer"),
        ValueError,
        "student_layer",
        "conv9",
    ),
    bad(
        "capture-unknown",
        lambda: KF.capture_outputs(net(), ["head.fcc"]).__enter__(),
        ValueError,
        "head.fc",
        "head.fcc",
    ),
    bad(
        "forward-until-not-run",
        lambda: KF.forward_until(SharedBlock(), "unused", IMAGES),
        ValueError,
        "layer",
        "unused",
    ),
    bad(
        "forward-until-unknown",
        lambda: KF.forward_until(net(), "features.conv7", IMAGES),
        ValueError,
        "layer",
        "features.conv7",
    ),
    bad(
        "modules-through-unknown",
        lambda: KF.modules_through(net(), "features.bn7", IMAGES),
        ValueError,
        "layer",
        "features.bn7",
    ),
    bad(
        "modules-through-not-run",
        lambda: KF.modules_through(SharedBlock(), "unused", IMAGES),
        ValueError,
        "layer",
        "unused",
    ),
    bad(
        "output-shapes-not-run",
        lambda: KF.output_shapes(SharedBlock(), ["unused"], IMAGES),
        ValueError,
        "layer",
        "unused",
    ),
    bad("adapter-spatial", lambda: KF.build_adapter((2, 4, 8, 8), (2, 4, 4, 4)), ValueError, "student", (2, 4, 8, 8)),
    bad("adapter-rank", lambda: KF.build_adapter((2, 4, 8, 8), (2, 16)), ValueError, "teacher", (2, 16)),
    bad("adapter-3d", lambda: KF.build_adapter((2, 4, 8), (2, 5, 8)), ValueError, "student", (2, 4, 8)),
]

LOGITS = torch.randn(2, 3)
LOSS_CASES = [
    bad("kd-temperature-0", lambda: KF.logit_distillation_loss(LOGITS, LOGITS, 0.0), ValueError, "temperature", 0.0),
    bad(
        "kd-temperature-nan",
        lambda: KF.logit_distillation_loss(LOGITS, LOGITS, math.nan),
        ValueError,
        "temperature",
        math.nan,
    ),
    bad(
        "kd-temperature-inf",
        lambda: KF.logit_distillation_loss(LOGITS, LOGITS, math.inf),
        ValueError,
        "temperature",
        math.inf,
    ),
    bad(
        "kd-temperature-str",
        lambda: KF.logit_distillation_loss(LOGITS, LOGITS, wrong("4")),
        ValueError,
        "temperature",
        "4",
    ),
    bad(
        "kd-shapes",
        lambda: KF.logit_distillation_loss(LOGITS, torch.randn(2, 4)),
        ValueError,
        "teacher_logits",
        LOGITS,
        "(2, 3)",
        "(2, 4)",
    ),
    bad(
        "kd-1d", lambda: KF.logit_distillation_loss(LOGITS[0], LOGITS[1]), ValueError, "student_logits", LOGITS, "(3,)"
    ),
    bad(
        "kd-int",
        lambda: KF.logit_distillation_loss(LOGITS.long(), LOGITS.long()),
        ValueError,
        "student_logits",
        LOGITS,
        "torch.int64",
    ),
    bad(
        "feature-shapes",
        lambda: KF.feature_distillation_loss(torch.zeros(2, 4), torch.zeros(2, 5)),
        ValueError,
        "teacher_feature",
        LOGITS,
        "(2, 4)",
        "(2, 5)",
    ),
    bad(
        "feature-int",
        lambda: KF.feature_distillation_loss(torch.zeros(2, 4).long(), torch.zeros(2, 4).long()),
        ValueError,
        "student_feature",
        LOGITS,
        "torch.int64",
    ),
    bad("batch-dict-keys", lambda: KF.unpack_batch({"x": 1}), ValueError, "batch", ["x"]),
    bad("batch-tensor", lambda: KF.unpack_batch(IMAGES), ValueError, "batch", IMAGES, "Tensor"),
    bad("batch-one-item", lambda: KF.unpack_batch((IMAGES,)), ValueError, "batch", "tuple"),
]

TRANSFORM_CASES = [
    bad("color-3d", lambda: KF.color_jitter(IMAGES[0], GENERATOR), ValueError, "images", IMAGES, "(3, 8, 8)"),
    bad("color-strength", lambda: KF.color_jitter(IMAGES, GENERATOR, strength=1.5), ValueError, "strength", 1.5),
    bad(
        "color-mean-channels",
        lambda: KF.color_jitter(IMAGES, GENERATOR, mean=[0.5, 0.5]),
        ValueError,
        "mean",
        [0.5, 0.5],
    ),
    bad("color-std-zero", lambda: KF.color_jitter(IMAGES, GENERATOR, std=[0.0] * 3), ValueError, "std", [0.0] * 3),
    bad("color-generator", lambda: KF.color_jitter(IMAGES, wrong(0)), ValueError, "generator", "int"),
    bad(
        "crop-scale-reversed",
        lambda: KF.random_resized_crop(IMAGES, GENERATOR, scale=(0.9, 0.2)),
        ValueError,
        "scale",
        (0.9, 0.2),
    ),
    bad(
        "crop-scale-above-1",
        lambda: KF.random_resized_crop(IMAGES, GENERATOR, scale=(0.5, 2.0)),
        ValueError,
        "scale",
        (0.5, 2.0),
    ),
    bad("crop-uint8", lambda: KF.random_resized_crop(UINT8, GENERATOR), ValueError, "images", UINT8, "torch.uint8"),
    bad("shift-negative", lambda: KF.shift(IMAGES, GENERATOR, max_shift=-0.1), ValueError, "max_shift", -0.1),
    bad("shift-nan", lambda: KF.shift(IMAGES, GENERATOR, max_shift=math.nan), ValueError, "max_shift", math.nan),
]


# ---------------------------------------------------------------------------------------------- files not owned here
def unicam(**kw: Any) -> UniCAM:
    options: dict[str, Any] = dict(layer="features.relu2")
    options.update(kw)
    return UniCAM(net(), net(), **options)


X = torch.randn(6, 5)
D = distance_matrix(X)
OTHER_CASES = [  # errors that kd_probe.core.{agreement,distance_correlation,unicam} already raise
    bad("dcor-int", lambda: KF.distance_correlation(X.long(), X), ValueError, "x", X, "torch.int64"),
    bad("dcor-3-samples", lambda: KF.distance_correlation(X[:3], X[:3]), ValueError, "x", 3),
    bad("dcor-counts", lambda: KF.distance_correlation(X, X[:5]), ValueError, "y", 5),
    bad("dcor-not-tensor", lambda: KF.distance_correlation(wrong([1.0]), X), TypeError, "x", "list"),
    bad("relevance-counts", lambda: KF.relevance_given(X, X, X[:4]), ValueError, "g", 4),
    bad("distances-not-square", lambda: correlation_of_distances(D, D[:, :5]), ValueError, "b", D, "(6, 5)"),
    bad("distances-int", lambda: correlation_of_distances(D.long(), D), ValueError, "a", D, "torch.int64"),
    bad("distances-3-samples", lambda: correlation_of_distances(D[:3, :3], D[:3, :3]), ValueError, "a", 3),
    bad("distances-counts", lambda: relevance_given_of_distances(D, D, D[:5, :5]), ValueError, "g", 5),
    bad("distances-diagonal", lambda: correlation_of_distances(D + 2 * torch.eye(6), D), ValueError, "a", 2),
    bad("distances-batch", lambda: correlation_of_distances(D.expand(2, 6, 6), D.expand(3, 6, 6)), ValueError, "b", 3),
    bad("label-embedding-negative", lambda: KF.label_embedding(torch.tensor([0, -1])), ValueError, "labels", -1),
    bad(
        "label-embedding-rows",
        lambda: KF.label_embedding(torch.tensor([0, 5]), torch.zeros(3, 2)),
        ValueError,
        "label_embeddings",
        3,
    ),
    bad("ifgsm-steps-0", lambda: KF.ifgsm(net(), IMAGES, LABELS, eps=0.1, steps=0), ValueError, "steps", 0),
    bad("ifgsm-eps-negative", lambda: KF.ifgsm(net(), IMAGES, LABELS, eps=-0.1), ValueError, "eps", -0.1),
    bad(
        "grad-cam-unknown",
        lambda: KF.grad_cam(net(), IMAGES, LABELS, layer="features.relu"),
        ValueError,
        "layer",
        "features.relu",
    ),
    bad(
        "grad-cam-3d",
        lambda: KF.grad_cam(net(), IMAGES[0], LABELS, layer="features.relu1"),
        ValueError,
        "images",
        IMAGES,
        "3, 8, 8",
    ),
    bad("unicam-model-x", lambda: UniCAM("vgg", net(), layer="features.relu2"), TypeError, "model_x", "str"),  # type: ignore[arg-type]
    bad("unicam-objective", lambda: unicam(objective="max"), ValueError, "objective", "max"),
    bad("unicam-features", lambda: unicam(features="flat"), ValueError, "features", "flat"),
    bad("unicam-prefix-tokens", lambda: unicam(prefix_tokens=wrong("cls")), ValueError, "prefix_tokens", "cls"),
    bad(
        "grad-cam-prefix-tokens",
        lambda: KF.grad_cam(net(), IMAGES, LABELS, layer="features.relu1", prefix_tokens=-1),
        ValueError,
        "prefix_tokens",
        -1,
    ),
    bad("unicam-layer-unknown", lambda: unicam(layer="features.relu5"), ValueError, "layer", "features.relu5"),
    bad(
        "unicam-feature-layer-unknown",
        lambda: unicam(feature_layer_x="head.f"),
        ValueError,
        "feature_layer_x",
        "head.f",
    ),
    bad("unicam-3-images", lambda: unicam()(IMAGES[:3], LABELS[:3]), ValueError, "images", IMAGES, "3 images"),
    bad("unicam-images-3d", lambda: unicam()(IMAGES[0], LABELS), ValueError, "images", IMAGES, "(3, 8, 8)"),
    bad("unicam-targets-count", lambda: unicam()(IMAGES, LABELS[:3]), ValueError, "targets", LABELS, "(3,)"),
    bad(
        "unicam-layer-not-conv",
        lambda: unicam(layer="head.fc", feature_layer_x="head.fc")(IMAGES, LABELS),
        ValueError,
        "layer",
        "head.fc",
    ),
]


# ---------------------------------------------------------------------------------------------- the command line
CLI_CASES = [
    bad("cli-unknown-command", lambda: cli("train"), CommandLineError, "COMMAND", "train"),
    bad("cli-seeds-0", lambda: cli("demo", "--seeds", "0"), CommandLineError, "--seeds", 0),
    bad("cli-epochs-negative", lambda: cli("demo", "--epochs", "-2"), CommandLineError, "--epochs", -2),
    bad("cli-epochs-word", lambda: cli("demo", "--epochs", "ten"), CommandLineError, "--epochs", "ten"),
    bad("cli-seed-float", lambda: cli("demo", "--seed", "1.5"), CommandLineError, "--seed", 1.5),
    bad("cli-protocol", lambda: cli("demo", "--protocol", "fitnets"), CommandLineError, "--protocol", "fitnets"),
    bad(
        "cli-bias-word", lambda: cli("demo", "--background-bias", "high"), CommandLineError, "--background-bias", "high"
    ),
    bad("cli-samples-0", lambda: cli("demo", "--samples", "0"), CommandLineError, "--samples", 0),
    bad("cli-unknown-option", lambda: cli("demo", "--epocs", "3"), CommandLineError, "--epocs", "--epocs"),
    bad(
        "cli-report-no-runs",
        lambda: cli("report", "/nonexistent/runs"),
        CommandLineError,
        "report",
        "/nonexistent/runs",
    ),
    bad("cli-report-needs-folder", lambda: cli("report"), CommandLineError, "runs", "runs"),
]


@pytest.mark.parametrize("case", SIGMA_CASES)
def test_sigma_maps(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", POINTS_CASES)
def test_knowledge_points(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", DYNAMICS_CASES)
def test_dynamics(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layers(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", LOSS_CASES)
def test_losses_and_batches(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", TRANSFORM_CASES)
def test_transforms(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", OTHER_CASES)
def test_agreement_distance_correlation_unicam(case: Bad) -> None:
    check(case)


@pytest.mark.parametrize("case", CLI_CASES)
def test_command_line(case: Bad) -> None:
    check(case)
