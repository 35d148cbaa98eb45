"""The demo's options and what they amount to: epochs, data sizes, networks and the knowledge-point probe's
σ settings (``kd_probe.demo`` runs the plan; ``benchmarks/bench_demo_probes.py`` times its probe)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from kd_probe._paths import check_name
from kd_probe.callbacks import KnowledgePointProbe

__all__ = ["PROBE_DEFAULTS", "Plan", "ProbeClock", "add_arguments", "check_arguments", "make_plan", "sigma_options"]

# (probe images, noise samples per faithful step or secant pass, secant passes) by (method, --full). The secant
# default, 40 images × 2 passes × 64 samples, costs no more than the faithful 10 images × 16 samples that the
# demo used before: the same time, 0.83× its convolution FLOPs on the trained student and 0.77× at
# initialisation, with the faithful engine's early stop (patience 3; ≈ 0.53× without it) —
# benchmarks/bench_demo_probes.py times both in one run.
# --full keeps the paper's faithful settings; --full --method secant takes estimate_sigma_maps' secant defaults.
PROBE_DEFAULTS: dict[tuple[str, bool], tuple[int, int, int | None]] = {
    ("secant", False): (40, 64, 2),
    ("faithful", False): (10, 16, None),
    ("secant", True): (32, 256, 3),
    ("faithful", True): (32, 96, None),
}


# default (student, teacher) epochs by modality: the small transformers and PointNets train in seconds per
# epoch but need more epochs than the VGGs (students ≈ 90 % at epoch 15 on sentences, ≈ 95 % at 20 on clouds)
EPOCHS = {"image": (10, 10), "text": (40, 30), "points": (20, 20)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _experiment(text: str) -> str:
    try:
        return check_name(text, "--experiment")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's command-line options (shared by ``kd-probe demo`` and ``python -m kd_probe.demo``)."""
    add = parser.add_argument
    add("--out", type=Path, default=Path("runs"), help="root folder of the TensorBoard logs (default: runs)")
    add(
        "--experiment",
        type=_experiment,
        default="demo",
        help="experiment name, one folder name: logs go to OUT/EXPERIMENT/<run>",
    )
    add("--overwrite", action="store_true", help="remove the runs and report of an earlier demo in OUT/EXPERIMENT")
    add(
        "--protocol",
        choices=("hinton", "paper"),
        default="hinton",
        help="hinton: logit KD into a smaller student; paper: [KP]'s two-phase feature mimicking, one architecture",
    )
    add(
        "--modality",
        choices=("image", "text", "points"),
        default="image",
        help="built-in data: image (shapes, the default), text (sentiment sentences) or points (3-D point clouds)",
    )
    add("--seed", type=int, default=0, help="seed of the data and of the first run")
    add("--seeds", type=_positive, default=1, help="repeat the distilled and baseline runs over this many seeds")
    add(
        "--epochs",
        type=_positive,
        default=None,
        help="epochs of the students (default 10 for images, 40 for text, 20 for points; ×3 with --full)",
    )
    add(
        "--teacher-epochs",
        type=_positive,
        default=None,
        help="epochs of the teacher (default 10 for images, 30 for text, 20 for points; ×2 with --full)",
    )
    add("--num-classes", type=int, default=6, help="shape classes (2-8)")
    add("--image-size", type=int, default=32, help="image side in pixels")
    add("--train-size", type=_positive, default=None, help="training images (default 4000; 5000 with --full)")
    add(
        "--background-bias",
        type=float,
        default=0.2,
        help="probability that the background is tied to the class (a shortcut)",
    )
    add(
        "--method",
        choices=("secant", "faithful"),
        default=None,
        help="σ maps: secant (spec §1.8, the default) or faithful (spec §1.2, the default with --full)",
    )
    add(
        "--probe-images",
        type=_positive,
        default=None,
        help="held-out probe images (default 40 with secant, 10 with faithful, 32 with --full)",
    )
    add(
        "--samples",
        type=_positive,
        default=None,
        help="noise samples per secant pass (default 64) or per faithful σ step (default 16; 96 with --full)",
    )
    add("--passes", type=_positive, default=None, help="secant passes (default 2)")
    add("--full", action="store_true", help="a longer, more faithful run (the paper's faithful probe settings)")
    add("--quick", action="store_true", help="a tiny run that checks the pipeline in seconds")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse option combinations that argparse alone cannot, as argparse does (usage, message, exit 2)."""
    try:
        make_plan(args)
    except ValueError as error:
        parser.error(str(error))


def _method(args: argparse.Namespace) -> str:
    return str(getattr(args, "method", None) or ("faithful" if args.full else "secant"))


@dataclass
class Plan:
    epochs: int
    teacher_epochs: int
    train_size: int
    probe_images: int
    method: str
    samples: int  # noise samples per faithful step or per secant pass
    passes: int | None  # secant only
    steps: int
    grid: int
    teacher_widths: tuple[int, ...]
    student_widths: tuple[int, ...]
    schedule: list[int] | str
    unicam_images: int = 64  # held-out images of the agreement and UniCAM probes (at least 64 but in --quick)

    @property
    def layer(self) -> str:
        return f"features.bn{2 * len(self.student_widths)}"  # the last convolution's pre-ReLU output


def make_plan(args: argparse.Namespace) -> Plan:
    """What the options amount to (defaults filled in)."""
    method = _method(args)
    passes = getattr(args, "passes", None)
    if passes is not None and method != "secant":
        raise ValueError(f"argument --passes: applies to --method secant only, got --method {method}")
    if args.quick:
        quick_passes = (passes or 2) if method == "secant" else None
        samples = args.samples or (8 if method == "secant" else 4)
        return Plan(1, 1, 256, 4, method, samples, quick_passes, 25, 8, (8, 16), (4, 8), [0, 1], unicam_images=16)
    images, samples, default_passes = PROBE_DEFAULTS[method, bool(args.full)]
    student_epochs, teacher_epochs = EPOCHS[getattr(args, "modality", "image") or "image"]
    epochs = args.epochs or (3 * student_epochs if args.full else student_epochs)
    small = (16, 32, 64)
    return Plan(
        epochs=epochs,
        teacher_epochs=args.teacher_epochs or (2 * teacher_epochs if args.full else teacher_epochs),
        train_size=args.train_size or (5000 if args.full else 4000),
        probe_images=args.probe_images or images,
        method=method,
        samples=args.samples or samples,
        passes=passes or default_passes,
        steps=80,
        grid=16,
        teacher_widths=small if args.protocol == "paper" else (32, 64, 128),
        student_widths=small,
        schedule="paper" if args.full else sorted({0, 1, 2, 3, epochs // 2, 3 * epochs // 4, epochs}),
    )


def sigma_options(plan: Plan) -> dict[str, Any]:
    """The σ options of the demo's ``KnowledgePointProbe`` (those of ``estimate_sigma_maps``)."""
    options: dict[str, Any] = dict(layer=plan.layer, method=plan.method, grid=plan.grid, steps=plan.steps)
    options["samples"] = plan.samples
    if plan.passes is not None:
        options["passes"] = plan.passes
    return options


class ProbeClock(pl.Callback):
    """Adds up the seconds of a ``KnowledgePointProbe``'s probes; list it right after the probe, so that each
    of its hooks runs after the probe's."""

    def __init__(self, probe: KnowledgePointProbe) -> None:
        self.probe, self.seconds, self._seen = probe, 0.0, 0

    def _read(self) -> None:
        if len(self.probe.history) > self._seen and self.probe.cost.measured is not None:
            self.seconds += self.probe.cost.measured
        self._seen = len(self.probe.history)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read()
