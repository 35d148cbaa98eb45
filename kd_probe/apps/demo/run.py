"""The main job: KD vs learning from scratch on the built-in data, explained with knowledge points.

Run ``kd-probe demo`` (or ``python -m kd_probe demo``). It trains a teacher, then a distilled student and a
from-scratch baseline with the same architecture, data, seed and schedule; every student run carries a
``KnowledgePointProbe``, a ``WeightTrajectoryMonitor``, an ``AgreementProbe`` and a ``UniCAMProbe``. The
knowledge-point probe makes its σ maps with the secant method (methods §1.8) on 40 held-out images, at less cost
than the faithful method on 10 (``--method faithful``); ``--full`` uses the paper's faithful settings. Logs go
to ``runs/<experiment>/<run>``, so ``tensorboard --logdir runs/<experiment>`` overlays the runs; ``report.md``
in that folder says whether the knowledge-point paper's three hypotheses hold for this run.

``--methods kd,dkd,at,crd`` (or ``all``) compares KD methods: one distilled student per method and seed, in
``distilled-<method>[-sN]``, against the same baseline, with the same student architecture, data, seed, schedule
and probe items; the report then has a row per method (:mod:`kd_probe.apps.report.methods`).

``<experiment>`` is one safe path component. A folder that already holds a demo's runs is refused before
anything trains (a second run would append to every TensorBoard curve); ``--overwrite`` first removes what the
demo writes there — the run folders ``teacher``, ``distilled[-<method>][-sN]`` and ``baseline[-sN]`` (only when they
hold TensorBoard event files or a ``kd_probe_run.json``, and never through a link), ``report.md`` and the
report's figures — and leaves everything else in the folder alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from kd_probe.apps.demo.eta import DemoClock, DemoProgressBar, EpochTimer
from kd_probe.apps.demo.folders import clear_experiment
from kd_probe.apps.demo.methods import kd_method
from kd_probe.apps.demo.modalities import Modality, modality
from kd_probe.apps.demo.plan import (
    Plan,
    ProbeClock,
    add_arguments,
    check_arguments,
    make_plan,
    seed_pairs,
)
from kd_probe.apps.demo.probes import agreement_probe, knowledge_probes, student_probes, unicam_probe
from kd_probe.apps.options import QUICK_NOTE, Parser, demo_methods, ignored_demo_flags
from kd_probe.apps.report.digest import Digest
from kd_probe.callbacks import probe_epochs
from kd_probe.data import ShapesDataModule
from kd_probe.io.run_files import RUN_FILE
from kd_probe.modules import DistillationModule, run_two_phase

__all__ = ["DemoResult", "RunResult", "add_arguments", "check_arguments", "main", "run_demo"]


@dataclass
class RunResult:
    name: str
    role: str  # "teacher", "distilled" or "baseline"
    seed: int
    accuracy: float
    log_dir: Path


@dataclass
class DemoResult:
    """Every run, where the logs and the report are, and how long it took."""

    runs: list[RunResult]
    log_dir: Path
    seconds: float
    report_path: Path | None = None
    report_text: str = field(default="", repr=False)
    probe_seconds: float = 0.0  # spent in the knowledge-point probes (σ maps, counts, logging)
    modality: str = "image"
    note: str | None = None  # one line printed before the report and written at its top (--quick)
    rank: int = 0  # over several devices, this process's rank: only rank 0 prints and writes
    digest: Digest | None = field(default=None, repr=False)  # the report's short form, printed after training

    def accuracy(self, role: str) -> float:
        values = [run.accuracy for run in self.runs if run.role == role]
        return sum(values) / len(values)


_DATA_NAMES = {"image": "shapes", "text": "sentiment", "points": "point-cloud"}


def _logger(log_dir: Path, run: str) -> TensorBoardLogger:
    return TensorBoardLogger(save_dir=str(log_dir), name=run, version="", default_hp_metric=False)


def _trainer(
    logger: TensorBoardLogger, epochs: int, callbacks: list[pl.Callback], quick: bool, plan: Plan | None = None
) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=logger, callbacks=callbacks, **_trainer_options(quick, plan))


def _timed(callbacks: Sequence[pl.Callback], clock: DemoClock, kind: str, ends_run: bool = True) -> list[pl.Callback]:
    """``callbacks``, then the timer of the demo's epochs (after the probes, so it counts them) and the progress
    bar that shows the demo's time left."""
    return [*callbacks, EpochTimer(clock, kind, ends_run), DemoProgressBar(clock)]


def _trainer_options(quick: bool, plan: Plan | None = None, unused: bool = False) -> dict[str, Any]:
    """The demo's Trainer options; ``plan`` gives the accelerator and devices (the CPU and one device without it).
    Over several devices: DDP, told of ``unused`` parameters (the two-phase protocol's head in its first phase)."""
    strategy = "ddp_find_unused_parameters_true" if unused else "ddp"
    several = {"strategy": strategy} if plan and plan.devices > 1 else {}
    return dict(
        **several,
        enable_checkpointing=not quick,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # on a GPU some kernels have no deterministic version (a pooling layer's backward): use the deterministic
        # ones where they exist, and run the others rather than stop (Lightning's "warn")
        deterministic="warn" if plan and plan.accelerator == "gpu" else True,
        log_every_n_steps=1 if quick else 10,
        accelerator=plan.accelerator if plan else "cpu",
        devices=plan.devices if plan else 1,
    )


def _silent(*_: Any, **__: Any) -> None:
    """Ranks other than 0 print nothing."""


def _unrecorded(run: RunResult, *_: Any) -> RunResult:
    """Ranks other than 0 write no run file."""
    return run


def _record(run: RunResult, protocol: str, plan: Plan, kit: Modality, kd_method_name: str = "") -> RunResult:
    run.log_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "run": run.name,
        "role": run.role,
        "seed": run.seed,
        "protocol": protocol,
        "test_accuracy": run.accuracy,
        "epochs": plan.epochs,
        "layer": kit.layer,
        "modality": kit.name,
        **({"num_classes": classes} if isinstance(classes := getattr(kit.data, "num_classes", None), int) else {}),
        "threads": torch.get_num_threads(),
        **({"kd_method": kd_method_name} if run.role == "distilled" and kd_method_name else {}),
    }
    (run.log_dir / RUN_FILE).write_text(json.dumps(info, indent=2))
    return run


def _quiet_lightning() -> None:
    """Keep the console to progress bars and results: no Lightning tips or hardware banners."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # inside Lightning itself
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*does not have a deterministic implementation.*")  # on a GPU
    # DDP over several devices: the test set's sampler pads it to a multiple of the devices (said in the docs)
    warnings.filterwarnings("ignore", message=r".*Using `DistributedSampler` with the dataloaders.*")
    warnings.filterwarnings("ignore", message=r".*all_gather is deprecated.*")  # inside Lightning itself


def run_demo(args: argparse.Namespace) -> DemoResult:
    """Train the teacher, then distilled and baseline students over the seeds; write the report.

    Raises:
        FileExistsError: ``OUT/EXPERIMENT`` holds an earlier demo and ``args.overwrite`` is off (nothing is
            trained).
        ValueError: the options contradict each other (``--passes`` without the secant method, ``--quick`` with
            ``--full``, more ``--num-classes`` than the point clouds have); nothing is trained or removed. An
            option that another makes meaningless (``--epochs`` with ``--quick``, ``--image-size`` with text) is
            named on one line on stderr and ignored.
    """
    with computing_threads(getattr(args, "threads", 2)):
        return _run_demo(args)


@contextmanager
def computing_threads(threads: int) -> Iterator[None]:
    """Compute with exactly ``threads`` intra-op CPU threads (``0``: leave PyTorch's setting), then restore.

    PyTorch's CPU kernels split some reductions (a convolution's weight gradient, a long sum) into one part per
    thread, so the float results depend on the thread count: 1 and 2 threads give different weights after a few
    steps, and a different demo after ten epochs. A fixed count makes the demo bitwise repeatable on every
    machine of one kind, whatever its cores or ``OMP_NUM_THREADS``.
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo_rank(plan: Plan) -> int:
    """This process's rank: over several devices Lightning starts ranks 1, 2, … as copies of the command (with
    ``LOCAL_RANK`` set), which run every fit with rank 0 and leave printing and writing to it; 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0")) if plan.devices > 1 else 0


def _run_demo(args: argparse.Namespace) -> DemoResult:
    start = time.perf_counter()
    plan = make_plan(args)
    rank = demo_rank(plan)
    say = print if rank == 0 else _silent
    for ignored in ignored_demo_flags(args):  # an option another one makes meaningless: said, never silently dropped
        say(f"kd-probe demo: {ignored}", file=sys.stderr)
    seeds, why = seed_pairs(args)
    if why:
        say(f"kd-probe demo: {why}")
    methods, left_out = demo_methods(args)
    if left_out:
        say(f"kd-probe demo: {left_out}")
    if rank == 0:  # the other ranks start with the first fit, after this
        clear_experiment(args.out / args.experiment, getattr(args, "overwrite", False))
    _quiet_lightning()
    kit = modality(args, plan)
    data = kit.data
    log_dir = args.out / args.experiment
    options: dict[str, Any] = dict(optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine")
    students = (len(methods) or 1) + 1  # per seed: a distilled student per KD method, and the baseline
    total = 1 + students * seeds
    clocks: list[ProbeClock] = []
    head_epochs = plan.head_epochs if args.protocol == "paper" else 0
    probes_per_run = len(probe_epochs(plan.schedule, max_epochs=plan.epochs))
    clock = DemoClock(plan.teacher_epochs, plan.epochs + head_epochs, students * seeds, probes_per_run, clocks)

    threads = f", {torch.get_num_threads()} CPU threads: --threads" if args.threads else ""
    if plan.accelerator == "gpu":
        threads = f", on {plan.devices} GPU{'s' if plan.devices > 1 else ''}: --accelerator{threads}"
    elif plan.devices > 1:
        threads = f", DDP over {plan.devices} CPU processes{threads}"
    say(f"[1/{total}] teacher: {kit.describe_teacher}, {plan.teacher_epochs} epochs ({kit.name} data{threads})")
    pl.seed_everything(args.seed, verbose=False)
    teacher = DistillationModule(kit.teacher(), **options)
    trainer = _trainer(_logger(log_dir, "teacher"), plan.teacher_epochs, _timed([], clock, "teacher"), args.quick, plan)
    trainer.fit(teacher, datamodule=data)
    accuracy = _test(trainer, teacher, data)
    record = _record if rank == 0 else _unrecorded
    runs = [record(RunResult("teacher", "teacher", args.seed, accuracy, log_dir / "teacher"), args.protocol, plan, kit)]

    step = 1
    for seed in range(args.seed, args.seed + seeds):
        suffix = f"-s{seed}" if seeds > 1 else ""
        for method in methods or (getattr(args, "kd_method", "kd"),):
            step += 1
            name = f"distilled-{method}{suffix}" if methods else f"distilled{suffix}"
            how = "two-phase feature mimicking at " + kit.layer if args.protocol == "paper" else _how(method)
            say(
                f"[{step}/{total}] distilled student{suffix}{_which(method, methods)}: {kit.describe_student}, "
                f"{how}, {plan.epochs} epochs, knowledge points at {kit.layer} ({clock.describe()})"
            )
            pl.seed_everything(seed, verbose=False)
            student = kit.student()
            if args.protocol == "paper":
                probes = knowledge_probes(plan, kit, seed, clocks)
                accuracy = _two_phase(
                    student, teacher.student, kit, (log_dir, name), plan, seed, probes, options, (clock, args.quick)
                )
            else:
                module = DistillationModule(student, teacher.student, **options, **kd_method(args, kit, method))
                callbacks = student_probes(plan, kit, teacher.student, seed, clocks)
                trainer = _trainer(
                    _logger(log_dir, name), plan.epochs, _timed(callbacks, clock, "student"), args.quick, plan
                )
                trainer.fit(module, datamodule=data)
                accuracy = _test(trainer, module, data)
            recorded = method if args.protocol == "hinton" else ""
            runs.append(
                record(RunResult(name, "distilled", seed, accuracy, log_dir / name), args.protocol, plan, kit, recorded)
            )

        step += 1
        say(
            f"[{step}/{total}] baseline student{suffix}: the same student from scratch, {plan.epochs} epochs "
            f"({clock.describe()})"
        )
        setattr(data, "with_index", False)  # noqa: B010 (CRD's run may have set it)
        pl.seed_everything(seed, verbose=False)
        module = DistillationModule(kit.student(), **options)
        name = f"baseline{suffix}"
        callbacks = student_probes(plan, kit, teacher.student, seed, clocks)
        trainer = _trainer(_logger(log_dir, name), plan.epochs, _timed(callbacks, clock, "student"), args.quick, plan)
        trainer.fit(module, datamodule=data)
        accuracy = _test(trainer, module, data)
        runs.append(record(RunResult(name, "baseline", seed, accuracy, log_dir / name), args.protocol, plan, kit))

    if rank != 0:
        return DemoResult(runs, log_dir, time.perf_counter() - start, rank=rank)
    from kd_probe.apps.report.write import write_report

    note, digest = QUICK_NOTE if args.quick else None, Digest()
    folders = [run.log_dir for run in runs if run.role != "teacher"]
    report_path, text = write_report(folders, log_dir, note=note, digest=digest)
    seconds = time.perf_counter() - start
    probe_seconds = sum(clock.seconds for clock in clocks)
    return DemoResult(runs, log_dir, seconds, report_path, text, probe_seconds, kit.name, note, digest=digest)


def _how(method: str) -> str:
    """How a distilled student learns from the teacher, for the run's header line."""
    return "logit KD (T=4)" if method == "kd" else f"KD method {method} (kd_probe.losses)"


def _which(method: str, methods: Sequence[str]) -> str:
    """`` (dkd)`` when the demo compares methods, else nothing."""
    return f" ({method})" if methods else ""


def _test(trainer: pl.Trainer, module: pl.LightningModule, data: pl.LightningDataModule) -> float:
    (result,) = trainer.test(module, datamodule=data, verbose=False)
    return float(result["test/acc"])


def _two_phase(
    student: nn.Module,
    teacher: Any,
    kit: Modality,
    where: tuple[Path, str],
    plan: Plan,
    seed: int,
    probes: list[pl.Callback],
    options: dict[str, Any],
    timing: tuple[DemoClock, bool],
) -> float:
    """[KP]: phase 1 mimics the teacher's layer (probed), phase 2 trains the head with labels."""
    (log_dir, name), (clock, quick) = where, timing
    data = kit.data
    head = [agreement_probe(plan, data, teacher, seed)] if isinstance(data, ShapesDataModule) else []
    mimic = [unicam_probe(plan, data, teacher)] if isinstance(data, ShapesDataModule) else []
    result = run_two_phase(
        student,
        teacher,
        data,
        layer=kit.layer,
        mimic_epochs=plan.epochs,
        head_epochs=plan.head_epochs,
        trainer_options=_trainer_options(quick, plan, unused=True),
        mimic_callbacks=_timed([*probes, *mimic], clock, "student", ends_run=False),
        head_callbacks=_timed(head, clock, "student"),
        mimic_trainer_options={"logger": _logger(log_dir, name)},
        head_trainer_options={"logger": _logger(log_dir / name, "head")},
        **options,
    )
    return _test(result.head_trainer, result.head_module, data)


def main(argv: list[str] | None = None) -> DemoResult:
    """Entry point of ``python -m kd_probe.apps.demo.run``."""
    parser = add_arguments(Parser(prog="kd-probe demo", description=__doc__))
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    try:
        result = run_demo(args)
    except FileExistsError as error:
        parser.exit(2, f"kd-probe demo: {error}\n")
    return report(result)


def report(result: DemoResult) -> DemoResult:
    """Print the accuracies, the report's short form (the verdicts and their warnings first, then a few key
    numbers, then where report.md is) and the TensorBoard command (rank 0 only)."""
    if result.rank:
        return result
    print(f"\nTest accuracy on the built-in {_DATA_NAMES.get(result.modality, result.modality)} data")
    for run in result.runs:
        print(f"  {run.name:<22}{run.accuracy:6.1%}")
    if result.note and (result.digest or result.report_text):
        print(f"\n{result.note}")
    if result.digest is not None:
        print("\n" + "\n".join(result.digest.lines()))
    elif result.report_text:
        print(f"\n{result.report_text}")
        print(f"Full report: {result.report_path}")
    probes = f" ({result.probe_seconds:.0f} s of it in the knowledge-point probes)" if result.probe_seconds else ""
    print(f"\nDone in {result.seconds:.0f} s{probes}. Watch the curves with:\n  {_tensorboard_command(result.log_dir)}")
    return result


IMAGES_KEPT = 1000  # image grids TensorBoard keeps per tag and run: every probe step of any schedule


def _tensorboard_command(log_dir: Path) -> str:
    """A TensorBoard command that works as printed, with or without the virtual environment active: this
    Python's ``tensorboard`` script, else ``python -m tensorboard.main``; ``--samples_per_plugin images=1000``
    keeps every image grid (TensorBoard keeps 10 per tag by default, dropping the one from before training; and
    ``images=0``, which older TensorBoards read as "all", makes TensorBoard 2.21 serve no image at all)."""
    script = Path(sys.executable).parent / "tensorboard"
    program = [str(script)] if script.is_file() else [sys.executable, "-m", "tensorboard.main"]
    return shlex.join([*program, "--logdir", str(log_dir), "--samples_per_plugin", f"images={IMAGES_KEPT}"])


if __name__ == "__main__":  # pragma: no cover
    main()
