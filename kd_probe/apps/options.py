"""The ``kd-probe`` command's options, importable without torch or Lightning so that ``--help`` and a mistyped
option answer at once (``kd_probe.apps.cli`` imports the heavy modules only for the command it runs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from kd_probe.io.paths import check_name

__all__ = [
    "FEATURE_METHODS",
    "KD_METHODS",
    "LIGHTNING_COMMANDS",
    "MAX_CLASSES",
    "MIN_IMAGE_SIZE",
    "POINT_CLASSES",
    "QUICK_NOTE",
    "RESAMPLES",
    "Parser",
    "add_demo_arguments",
    "add_report_arguments",
    "check_demo_arguments",
    "demo_methods",
    "ignored_demo_flags",
]

LIGHTNING_COMMANDS = ("fit", "validate", "test")  # handed to LightningCLI (kd_probe.apps.lightning_cli)
MAX_CLASSES = 8  # len(kd_probe.data.shapes.SHAPES), one class per built-in shape (tests/test_cli.py checks)
KD_METHODS = (  # kd_probe.losses.METHODS, without importing torch (tests/test_demo_flags.py checks)
    "kd",
    "dkd",
    "dist",
    "logit_standard_kd",
    "fitnets",
    "at",
    "nst",
    "vid",
    "sp",
    "pkt",
    "rkd",
    "cc",
    "crd",
)
FEATURE_METHODS = ("fitnets", "at", "nst", "vid")  # they match feature maps: image students and teachers
POINT_CLASSES = 5  # the most point-cloud objects the demo's --modality points uses (its default too)
MIN_IMAGE_SIZE = 16  # the demo's knowledge-point probe takes σ on a 16×16 grid of the image
RESAMPLES = 2000  # kd_probe.core.uncertainty.RESAMPLES (tests/test_cli.py checks), without importing torch
QUICK_NOTE = (
    "Note: --quick trains each model for 1 epoch on 256 images, so the models are near chance level and the "
    "verdicts below say nothing about distillation; run without --quick for real ones."
)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes are one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def _integer(low: int, expected: str, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` (to ``high``), else "expected <expected>, got <text>"."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


_positive = _integer(1, "a positive integer")


def _devices(text: str) -> int | str:
    """``--devices``: ``auto`` or a positive integer."""
    return "auto" if text == "auto" else _integer(1, "auto or a positive integer")(text)


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability from 0 to 1, got {text}")
    return value


def _experiment(text: str) -> str:
    try:
        return check_name(text, "--experiment")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_demo_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's command-line options (shared by ``kd-probe demo`` and ``python -m kd_probe.apps.demo.run``)."""
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
    add(
        "--seeds",
        type=_positive,
        default=None,
        help="seed pairs: the distilled and baseline runs repeated over this many seeds (default 1 on the CPU, "
        "3 on a GPU, 5 with --full); the report's verdicts about distillation need at least 2",
    )
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
    add(
        "--num-classes",
        type=_integer(2, f"an integer from 2 to {MAX_CLASSES} (one class per built-in shape)", MAX_CLASSES),
        default=None,
        help=f"classes: shapes (2-{MAX_CLASSES}, default 6) or point-cloud objects (2-{POINT_CLASSES}, default "
        f"{POINT_CLASSES}); the sentences have 2",
    )
    add(
        "--image-size",
        type=_integer(MIN_IMAGE_SIZE, f"an integer of at least {MIN_IMAGE_SIZE} pixels (the σ maps' grid is 16×16)"),
        default=None,
        help=f"image side in pixels (at least {MIN_IMAGE_SIZE}, default 32; images only)",
    )
    add("--train-size", type=_positive, default=None, help="training images (default 4000; 5000 with --full)")
    add(
        "--background-bias",
        type=_probability,
        default=0.2,
        help="probability that the background is tied to the class (a shortcut)",
    )
    add(
        "--kd-method",
        choices=KD_METHODS,
        default="kd",
        help="how the distilled student learns from the teacher: one of kd_probe.losses (methods §6.4–6.16; feature "
        "methods fitnets, at, nst, vid at the probed layer, images only); default kd (Hinton)",
    )
    add(
        "--methods",
        type=_methods,
        default=None,
        help="compare KD methods: a comma-separated list of kd_probe.losses methods (e.g. kd,dkd,at,crd) or all; "
        "one distilled student per method and seed (run folders distilled-METHOD[-sSEED]) against one baseline, "
        "and a report of what each method transfers",
    )
    add(
        "--method",
        choices=("secant", "faithful"),
        default=None,
        help="σ maps: secant (methods §1.8, the default) or faithful (methods §1.2, the default with --full)",
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
    add(
        "--threads",
        type=_integer(0, "an integer of at least 0 (0: PyTorch's own choice, one per core)"),
        default=2,
        help="CPU threads for every computation (default 2): the results are bitwise the same for the same "
        "threads, seed and kind of machine; 0 leaves PyTorch's choice (one per core), and then they vary with the "
        "core count",
    )
    add(
        "--accelerator",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where the models train and the probes run: auto (a GPU when PyTorch sees one, else the CPU; the "
        "default), cpu or gpu",
    )
    add(
        "--devices",
        type=_devices,
        default="auto",
        help="devices per Trainer: auto (one: the default; the demo's small networks train fastest on one) or N: "
        "data-parallel (DDP) over N GPUs, or over N CPU processes with --accelerator cpu",
    )
    add("--full", action="store_true", help="a longer, more faithful run (the paper's faithful probe settings)")
    add(
        "--quick",
        action="store_true",
        help="a tiny run that checks the pipeline in seconds (1 epoch per model, 256 training images, 4 probe images)",
    )
    return parser


def _methods(text: str) -> tuple[str, ...]:
    """``--methods``: ``all`` or a comma-separated list of distinct KD methods."""
    if text.strip() == "all":
        return ("all",)
    names = tuple(name.strip() for name in text.split(","))
    unknown = [name for name in names if name not in KD_METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected all or a comma-separated list of {', '.join(KD_METHODS)}; got {text!r} ({unknown[0]!r} is "
            "not a KD method)"
            if unknown
            else f"expected all or a list of KD methods, got {text!r}"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"expected each KD method once, got {text!r} ({repeated[0]} twice)")
    return names


def demo_methods(args: argparse.Namespace) -> tuple[tuple[str, ...], str]:
    """The KD methods ``--methods`` compares (``()`` without it) and a note naming those ``all`` leaves out:
    the feature methods when the modality has no feature maps to match."""
    given = getattr(args, "methods", None)
    if not given:
        return (), ""
    if given != ("all",):
        return tuple(given), ""
    modality = getattr(args, "modality", None) or "image"
    if modality == "image":
        return KD_METHODS, ""
    kept = tuple(name for name in KD_METHODS if name not in FEATURE_METHODS)
    return kept, (
        f"--methods all runs {len(kept)} methods: the feature methods {', '.join(FEATURE_METHODS)} match feature "
        f"maps, which --modality {modality} has not."
    )


def sigma_method(args: argparse.Namespace) -> str:
    """The demo's σ method: ``--method``, else faithful with ``--full`` and secant without."""
    return str(getattr(args, "method", None) or ("faithful" if args.full else "secant"))


def check_demo_arguments(args: argparse.Namespace) -> None:
    """A ``ValueError`` for option combinations that argparse alone cannot refuse: contradictions, and values one
    modality cannot take (options another makes meaningless are only noted: :func:`ignored_demo_flags`)."""
    method = sigma_method(args)
    if getattr(args, "passes", None) is not None and method != "secant":
        raise ValueError(f"argument --passes: applies to --method secant only, got --method {method}")
    if getattr(args, "quick", False) and getattr(args, "full", False):
        raise ValueError("argument --full: not allowed with --quick (a pipeline check in seconds, not a longer run)")
    kd_method = getattr(args, "kd_method", "kd")
    methods = getattr(args, "methods", None)
    if methods and kd_method != "kd":
        raise ValueError(
            f"argument --methods: not allowed with --kd-method {kd_method} (--methods names every distilled "
            "student's method; add it to the list)"
        )
    if methods and getattr(args, "protocol", "hinton") == "paper":
        raise ValueError("argument --methods: applies to --protocol hinton (paper's protocol is its own method)")
    feature = [name for name in methods or () if name in FEATURE_METHODS]
    if feature and (getattr(args, "modality", None) or "image") != "image":
        raise ValueError(
            f"argument --methods: {feature[0]} matches feature maps, which --modality {args.modality} has not; "
            "use logit, relation or contrastive methods (--methods all leaves feature methods out there)"
        )
    if kd_method != "kd" and getattr(args, "protocol", "hinton") == "paper":
        raise ValueError(f"argument --kd-method: applies to --protocol hinton, got --kd-method {kd_method} with paper")
    if kd_method in FEATURE_METHODS and (getattr(args, "modality", None) or "image") != "image":
        raise ValueError(
            f"argument --kd-method: {kd_method} matches feature maps, which --modality {args.modality} has not; "
            "use a logit, relation or contrastive method"
        )
    classes = getattr(args, "num_classes", None)
    if getattr(args, "modality", None) == "points" and classes is not None and classes > POINT_CLASSES:
        raise ValueError(
            f"argument --num-classes: expected an integer from 2 to {POINT_CLASSES} with --modality points (one "
            f"class per point-cloud object), got {classes}"
        )


_QUICK_FIXES = (  # what --quick fixes: (option, attribute, what --quick does instead)
    ("--epochs", "epochs", "trains every student 1 epoch"),
    ("--teacher-epochs", "teacher_epochs", "trains the teacher 1 epoch"),
    ("--train-size", "train_size", "trains on 256 images"),
    ("--probe-images", "probe_images", "probes 4 images"),
)


def ignored_demo_flags(args: argparse.Namespace) -> list[str]:
    """One line per option given that another option makes meaningless, naming both (the demo prints them on
    stderr and runs without it): the sizes ``--quick`` fixes, ``--image-size`` without images and
    ``--num-classes`` with the two-class sentences."""
    notes = []
    if getattr(args, "quick", False):
        for option, name, instead in _QUICK_FIXES:
            if getattr(args, name, None) is not None:
                notes.append(f"{option} {getattr(args, name)} is ignored: --quick {instead} (drop --quick to use it).")
    modality = getattr(args, "modality", None) or "image"
    if modality != "image" and getattr(args, "image_size", None) is not None:
        notes.append(f"--image-size {args.image_size} is ignored: --modality {modality} has no images.")
    if modality == "text" and getattr(args, "num_classes", None) is not None:
        notes.append(
            f"--num-classes {args.num_classes} is ignored: --modality text has 2 classes (positive and negative "
            "sentences)."
        )
    return notes


def add_report_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``kd-probe report``'s options."""
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or experiment folders holding runs")
    parser.add_argument("--out", type=Path, default=None, help="where report.md goes (default: the first folder)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument(
        "--group-summaries",
        action="store_true",
        help="compare only each group's mean and spread over its runs, without pairing images (no paired "
        "intervals, no verdicts); needed for runs probed on different images, layers or settings",
    )
    parser.add_argument(
        "--resamples",
        type=_resamples,
        default=RESAMPLES,
        help=f"bootstrap resamples per interval (default {RESAMPLES})",
    )
    return parser


def _resamples(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 100:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 100 (bootstrap resamples), got {text!r}")
    return value
