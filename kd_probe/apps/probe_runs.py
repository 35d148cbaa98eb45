"""``kd-probe probe --config probe.yaml``: probe a run trained anywhere, from its saved checkpoints (issue 33).

The student network is built by ``class_path`` (as in ``kd-probe fit``), each checkpoint of the series is loaded
into it in the order of its epochs, and a :class:`~kd_probe.ProbeRunner` runs the probes — the same callback
classes and options as a ``fit`` config's — after each, as if training had just reached that epoch: the run
folder gets the history, summary, probe files and TensorBoard events of a live run, and ``kd_probe_run.json``
with the run's role, so ``kd-probe report`` compares offline and live runs alike. The weight path length ``D``
(methods §1.4) is summed over the checkpoints: every optimizer step's when a checkpoint was saved after every
step, else the straight segments between the saved ones.

A rerun over a longer series probes only the checkpoints after the last one probed (the runner's state is saved
in the run folder after each). YAML is read strictly, as by ``kd-probe fit``; checkpoints are read with
``torch.load(weights_only=True)``; a mistake is one sentence and exit status 2.

Example config::

    student: {class_path: kd_probe.models.VGG, init_args: {num_classes: 6}}
    checkpoints: runs/mine/checkpoints/epoch_*.pt     # a glob, a folder, or a list of files
    data: {class_path: kd_probe.ShapesDataModule, init_args: {num_classes: 6}}
    probes:
      - class_path: kd_probe.KnowledgePointProbe
        init_args: {images: datamodule, layer: features.bn6}
    run: runs/mine/distilled
    role: distilled
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import ActionConfigFile
from torch import nn

from kd_probe.apps.lightning_cli import PARSER_MODE, ConfigurationError, _instantiate_probe, _Parser, refusal
from kd_probe.callbacks import KnowledgePointProbe
from kd_probe.callbacks.runner import RUNNER_FILE, ProbeRunner
from kd_probe.io.checkpoints import Checkpoint, checkpoint_series
from kd_probe.io.paths import check_name
from kd_probe.io.run_files import RUN_FILE
from kd_probe.io.runs import CHECKPOINTS, ROLES
from kd_probe.models import fitting_state, load_weights

__all__ = ["main", "probe_checkpoints"]

PROG = "kd-probe probe"


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG, description="Probe a run trained anywhere, from its saved checkpoints.", parser_mode=PARSER_MODE
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file with the options below")
    parser.add_subclass_arguments(nn.Module, "student", required=True, help="the probed network (class_path)")
    parser.add_argument(
        "--checkpoints", type=str | list[str], required=True, help="a glob, a folder or a list of checkpoint files"
    )
    parser.add_argument("--epochs", type=list[int] | None, default=None, help="each checkpoint's epoch, in order")
    parser.add_argument("--checkpoint_key", type=str | None, default=None, help="the dict entry holding the weights")
    parser.add_argument("--checkpoint_prefix", type=str | None, default=None, help="a key prefix to strip")
    parser.add_subclass_arguments(nn.Module, "teacher", required=False, help="the teacher (class_path), if any")
    parser.add_argument("--teacher_checkpoint", type=str | None, default=None, help="the teacher's weights")
    parser.add_subclass_arguments(
        pl.LightningDataModule, "data", required=False, help="a data module, for probes given images: datamodule"
    )
    parser.add_argument("--probes", type=list[pl.Callback], required=True, help="the probes (class_path each)")
    parser.add_argument("--run", type=str, required=True, help="the run folder the probes write into")
    parser.add_argument("--role", type=str, default="distilled", help=f"the run's role: {' or '.join(ROLES)}")
    parser.add_argument("--kd_method", type=str | None, default=None, help="a distilled run's KD method")
    parser.add_argument("--seed", type=int, default=0, help="the run's training seed (the report pairs by it)")
    parser.add_argument("--max_epochs", type=int | None, default=None, help="default: the last checkpoint's epoch")
    parser.add_argument("--device", type=str, default="auto", help="auto (a GPU when there is one), cpu or cuda")
    parser.add_instantiator(_instantiate_probe, KnowledgePointProbe, subclasses=True)
    return parser


def probe_checkpoints(
    runner: ProbeRunner,
    student: nn.Module,
    series: list[Checkpoint],
    *,
    key: str | None = None,
    prefix: str | None = None,
    say: Any = print,
) -> int:
    """Probe ``student`` at each checkpoint of ``series``: the weights of each loaded in turn, one
    :meth:`~ProbeRunner.step` and one :meth:`~ProbeRunner.epoch_end`, the runner's state saved in the run folder
    after each. A run folder holding that state continues after its last probed epoch (from that checkpoint's
    weights); else the runner starts at the first checkpoint. Finishes the runner; the checkpoints probed."""
    saved, done = runner.folder / RUNNER_FILE, None
    if saved.is_file():
        runner.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
        done = runner.epoch
    todo = [point for point in series if done is None or point.epoch > done]
    if done is not None:
        resumed = next((point for point in reversed(series) if point.epoch == done), None)
        if resumed is None:
            raise ValueError(
                f"`checkpoints`: the run folder's {RUNNER_FILE} ends at epoch {done}, but no checkpoint of that epoch "
                "is in the series; give the whole series, or another `run` folder to start again."
            )
        load_weights(student, resumed.path, argument="checkpoints", key=key, prefix=prefix)
        runner.start()
        say(f"{PROG}: {runner.folder}: epochs up to {done} were probed before; {len(todo)} checkpoint(s) to go")
    else:
        first, todo = todo[0], todo[1:]
        load_weights(student, first.path, argument="checkpoints", key=key, prefix=prefix)
        start = time.perf_counter()
        runner.start(first.epoch)
        runner.save()
        say(f"[1/{len(series)}] epoch {first.epoch}: {first.path} ({time.perf_counter() - start:.1f} s)")
    for number, point in enumerate(todo, start=len(series) - len(todo) + 1):
        start = time.perf_counter()
        load_weights(student, point.path, argument="checkpoints", key=key, prefix=prefix)
        runner.step()
        runner.epoch_end(point.epoch)
        runner.save()
        say(f"[{number}/{len(series)}] epoch {point.epoch}: {point.path} ({time.perf_counter() - start:.1f} s)")
    runner.finish()
    return len(todo) + (done is None)


def _run(config: Any) -> Path:
    """Build everything the config names, then probe; the run folder."""
    if config.role not in ROLES:
        raise ValueError(f"`role` must be one of {', '.join(ROLES)}, got {config.role!r}.")
    if config.kd_method is not None and config.role != "distilled":
        raise ValueError(
            f"`kd_method`={config.kd_method!r} names a distilled run's method; this run's role is {config.role!r}."
        )
    if config.kd_method is not None:
        check_name(config.kd_method, "kd_method")
    if config.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"`device` must be 'auto', 'cpu' or 'cuda', got {config.device!r}.")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device`='cuda' asked for, but PyTorch sees no GPU; use 'auto' or 'cpu'.")
    device = torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")
    series = checkpoint_series(config.checkpoints, epochs=config.epochs, key=config.checkpoint_key)
    student: nn.Module = config.student.to(device)
    for point in series:  # every checkpoint fits the network before any is probed
        fitting_state(
            student, point.path, argument="checkpoints", key=config.checkpoint_key, prefix=config.checkpoint_prefix
        )
    teacher: nn.Module | None = config.teacher
    if config.teacher_checkpoint is not None:
        if teacher is None:
            raise ValueError(
                f"`teacher_checkpoint`={config.teacher_checkpoint!r} needs `teacher`: the network (class_path and "
                "init_args) whose weights the file holds."
            )
        load_weights(teacher, config.teacher_checkpoint, argument="teacher_checkpoint")
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
    run = Path(config.run)
    runner = ProbeRunner(
        config.probes,
        run,
        student=student,
        teacher=teacher,
        max_epochs=config.max_epochs or max(series[-1].epoch, 1),
        datamodule=config.data,
        live=False,
    )
    probe_checkpoints(runner, student, series, key=config.checkpoint_key, prefix=config.checkpoint_prefix)
    info = {
        "run": run.name,
        "role": config.role,
        "seed": config.seed,
        "epochs": series[-1].epoch,
        "checkpoints": len(series),
        "weight_path": CHECKPOINTS,  # D summed over the checkpoints, not every step (methods §1.4)
        **({"kd_method": config.kd_method} if config.kd_method else {}),
    }
    (run / RUN_FILE).write_text(json.dumps(info, indent=2))
    return run


def main(argv: list[str] | None = None) -> int:
    """Run ``kd-probe probe ARGS`` (``argv`` without the command; default ``sys.argv[2:]``); the exit status."""
    parser = _parser()
    try:
        config = parser.parse_args(sys.argv[2:] if argv is None else list(argv))
        try:
            config = parser.instantiate_classes(config)
        except Exception as error:  # a class refused its settings
            raise refusal(error) from error
        run = _run(config)
    except ConfigurationError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"{PROG}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"{PROG}: probed {run}; kd-probe report {run.parent} compares it with the other runs there")
    return 0
