"""The main job: train a teacher, a distilled student and a from-scratch baseline on the built-in data.

Run ``kd-probe demo`` (or ``python -m kd_probe.demo``). Every run logs to TensorBoard under
``runs/<experiment>/<run>``, so ``tensorboard --logdir runs/<experiment>`` overlays the curves.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from kd_probe.data import ShapesDataModule
from kd_probe.models import VGG
from kd_probe.modules import DistillationModule

__all__ = ["DemoResult", "add_arguments", "main", "run_demo"]


@dataclass
class DemoResult:
    """Test accuracies of the three runs, where their logs are, and how long it took."""

    teacher_accuracy: float
    distilled_accuracy: float
    baseline_accuracy: float
    log_dir: Path
    seconds: float


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's command-line options (shared by ``kd-probe demo`` and ``python -m kd_probe.demo``)."""
    parser.add_argument(
        "--out", type=Path, default=Path("runs"), help="root folder of the TensorBoard logs (default: runs)"
    )
    parser.add_argument("--experiment", default="demo", help="experiment name: logs go to OUT/EXPERIMENT/<run>")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of every run")
    parser.add_argument("--epochs", type=_positive, default=10, help="epochs of the distilled and baseline students")
    parser.add_argument("--teacher-epochs", type=_positive, default=10, help="epochs of the teacher")
    parser.add_argument("--num-classes", type=int, default=6, help="shape classes (2-8)")
    parser.add_argument("--image-size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--train-size", type=_positive, default=4000, help="training images")
    parser.add_argument(
        "--background-bias",
        type=float,
        default=0.2,
        help="probability that the background is tied to the class (a shortcut)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline in seconds")
    return parser


def _fit(
    module: DistillationModule, data: ShapesDataModule, log_dir: Path, run: str, epochs: int, quick: bool
) -> float:
    logger = TensorBoardLogger(save_dir=str(log_dir), name=run, version="", default_hp_metric=False)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=logger,
        enable_checkpointing=not quick,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        log_every_n_steps=1 if quick else 10,
    )
    trainer.fit(module, datamodule=data)
    (result,) = trainer.test(module, datamodule=data, verbose=False)
    return float(result["test/acc"])


def _quiet_lightning() -> None:
    """Keep the console to progress bars and results: no Lightning tips or hardware banners."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # inside Lightning itself


def run_demo(args: argparse.Namespace) -> DemoResult:
    """Train teacher, distilled student and baseline; return their test accuracies."""
    start = time.perf_counter()
    _quiet_lightning()
    train_size, val_size, test_size = (256, 64, 64) if args.quick else (args.train_size, 1000, 1000)
    data = ShapesDataModule(
        num_classes=args.num_classes,
        image_size=args.image_size,
        train_size=train_size,
        val_size=val_size,
        test_size=test_size,
        background_bias=args.background_bias,
        batch_size=64,
        seed=args.seed,
    )
    log_dir = args.out / args.experiment
    options: dict[str, Any] = dict(optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine")
    teacher_widths, student_widths = ((8, 16), (4, 8)) if args.quick else ((32, 64, 128), (16, 32, 64))
    teacher_epochs, epochs = (1, 1) if args.quick else (args.teacher_epochs, args.epochs)

    print(f"[1/3] teacher: VGG{teacher_widths}×2 convs, {teacher_epochs} epochs")
    pl.seed_everything(args.seed, verbose=False)
    teacher = DistillationModule(VGG(args.num_classes, widths=teacher_widths, convs_per_stage=2), **options)
    teacher_accuracy = _fit(teacher, data, log_dir, "teacher", teacher_epochs, args.quick)

    print(f"[2/3] distilled student: VGG{student_widths}×2 convs, logit KD (T=4), {epochs} epochs")
    pl.seed_everything(args.seed, verbose=False)
    distilled = DistillationModule(
        VGG(args.num_classes, widths=student_widths, convs_per_stage=2), teacher.student, **options
    )
    distilled_accuracy = _fit(distilled, data, log_dir, "distilled", epochs, args.quick)

    print(f"[3/3] baseline student: the same student from scratch, {epochs} epochs")
    pl.seed_everything(args.seed, verbose=False)
    baseline = DistillationModule(VGG(args.num_classes, widths=student_widths, convs_per_stage=2), **options)
    baseline_accuracy = _fit(baseline, data, log_dir, "baseline", epochs, args.quick)
    return DemoResult(teacher_accuracy, distilled_accuracy, baseline_accuracy, log_dir, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> DemoResult:
    """Entry point of ``python -m kd_probe.demo``."""
    args = add_arguments(argparse.ArgumentParser(prog="kd-probe demo", description=__doc__)).parse_args(argv)
    return report(run_demo(args))


def report(result: DemoResult) -> DemoResult:
    """Print the accuracies and the TensorBoard command."""
    print("\nTest accuracy on the built-in shapes data")
    print(f"  teacher            {result.teacher_accuracy:6.1%}")
    print(f"  distilled student  {result.distilled_accuracy:6.1%}")
    print(f"  baseline student   {result.baseline_accuracy:6.1%}   (same student, same recipe, no teacher)")
    print(f"\nDone in {result.seconds:.0f} s. Watch the curves with:\n  tensorboard --logdir {result.log_dir}")
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
