"""The demo's options and what they amount to: epochs, data sizes, networks and the knowledge-point probe's
σ settings (``kd_probe.apps.demo.run`` runs the plan; ``benchmarks/bench_demo_probes.py`` times its probe)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from kd_probe.apps.options import add_demo_arguments as add_arguments
from kd_probe.apps.options import check_demo_arguments, sigma_method
from kd_probe.callbacks import KnowledgePointProbe

__all__ = [
    "PROBE_DEFAULTS",
    "Plan",
    "ProbeClock",
    "accelerator",
    "add_arguments",
    "check_arguments",
    "make_plan",
    "seed_pairs",
    "sigma_options",
]

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


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse option combinations that argparse alone cannot, as argparse does (usage, message, exit 2)."""
    try:
        make_plan(args)
    except ValueError as error:
        parser.error(str(error))


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
    seeds: int = 1  # seed pairs (distilled and baseline runs per seed): seed_pairs
    accelerator: str = "cpu"  # the Trainers' accelerator: "cpu" or "gpu" (--accelerator, auto resolved)
    devices: int = 1  # the Trainers' devices (--devices)

    @property
    def layer(self) -> str:
        return f"features.bn{2 * len(self.student_widths)}"  # the last convolution's pre-ReLU output

    @property
    def head_epochs(self) -> int:
        """Epochs of the two-phase protocol's phase 2 (the head trained with labels), after ``epochs`` of phase 1."""
        return max(1, self.epochs // 3)


def seed_pairs(args: argparse.Namespace) -> tuple[int, str]:
    """How many seed pairs the demo trains, and the sentence that says why (methods §5.8: a verdict about
    distillation needs the seed-to-seed spread, so at least two pairs).

    ``--seeds N`` when given; otherwise 5 with ``--full``, 3 on a GPU, and 1 on the CPU (and with ``--quick``):
    there the default demo stays within minutes and its report says whether these runs differ, with no
    verdict about distillation.
    """
    given = getattr(args, "seeds", None)
    if given is not None:
        return given, "" if given > 1 else (
            "1 seed pair (--seeds 1): the report says whether these runs differ and gives no verdict about "
            "distillation, which needs at least 2 seed pairs."
        )
    if args.quick:
        return 1, ""
    if args.full:
        return (
            5,
            "5 seed pairs (the --full default), so that the report's verdicts about distillation count how much training seeds disagree.",
        )
    if torch.cuda.is_available() and (getattr(args, "accelerator", "auto") or "auto") != "cpu":
        return (
            3,
            "3 seed pairs (the default on a GPU), so that the report's verdicts about distillation count how much training seeds disagree.",
        )
    return 1, (
        "1 seed pair (the default on the CPU, to stay within minutes): the report says whether these runs differ "
        "and gives no verdict about distillation, which needs at least 2 seed pairs; --seeds 3 gives verdicts "
        "and takes about 3× as long."
    )


def accelerator(args: argparse.Namespace) -> tuple[str, int]:
    """The Trainers' accelerator and devices: ``--accelerator auto`` is ``gpu`` where CUDA is available and
    ``cpu`` elsewhere; ``--devices auto`` is one. A ``ValueError`` for ``gpu`` without CUDA and for more GPUs
    than PyTorch sees."""
    asked, devices = getattr(args, "accelerator", "auto") or "auto", getattr(args, "devices", "auto") or "auto"
    if asked == "gpu" and not torch.cuda.is_available():
        raise ValueError(
            "argument --accelerator: gpu asked for, but PyTorch sees no GPU (torch.cuda.is_available() is False); "
            "use --accelerator cpu or auto"
        )
    chosen = asked if asked != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    count = 1 if devices == "auto" else int(devices)
    if chosen == "gpu" and count > 1 and count > torch.cuda.device_count():
        raise ValueError(
            f"argument --devices: {count} GPUs asked for, but PyTorch sees {torch.cuda.device_count()}; "
            "use at most that many"
        )
    if chosen == "cpu" and count > 1 and asked != "cpu":
        raise ValueError(
            f"argument --devices: {count} devices asked for, but PyTorch sees no GPU; add --accelerator cpu to "
            f"train over {count} CPU processes"
        )
    return chosen, count


def make_plan(args: argparse.Namespace) -> Plan:
    """What the options amount to (defaults filled in)."""
    check_demo_arguments(args)
    method, passes = sigma_method(args), getattr(args, "passes", None)
    seeds = seed_pairs(args)[0]
    hardware = accelerator(args)
    if args.quick:
        quick_passes = (passes or 2) if method == "secant" else None
        samples = args.samples or (8 if method == "secant" else 4)
        quick = (1, 1, 256, 4, method, samples, quick_passes, 25, 8, (8, 16), (4, 8), [0, 1])
        return Plan(*quick, unicam_images=16, seeds=seeds, accelerator=hardware[0], devices=hardware[1])
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
        seeds=seeds,
        accelerator=hardware[0],
        devices=hardware[1],
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
        self.probe, self.seconds, self.probes, self._seen = probe, 0.0, 0, 0

    def _read(self) -> None:
        if len(self.probe.history) > self._seen and self.probe.cost.measured is not None:
            self.seconds += self.probe.cost.measured
            self.probes += 1
        self._seen = len(self.probe.history)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._read()
