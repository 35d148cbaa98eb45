"""Each KD method of ``kd_probe.losses`` in the demo's distillation: training-step cost and accuracy (issue 30).

Two sections (``--sections``), both on the image demo's networks: the student VGG(16,32,64) and the teacher
VGG(32,64,128), two convolutions per stage, on the built-in 32 px shapes in batches of 64, AdamW (lr 3e-3,
weight decay 1e-4) with a per-step cosine schedule. Each method is set up as ``kd-probe demo --kd-method NAME``
sets it up (``kd_probe/apps/demo/methods.py``): its authors' defaults next to cross-entropy at weight 1, feature
methods (fitnets, at, nst, vid) at the demo's probed layer ``features.bn6`` of both networks, relation methods and
CRD on the embeddings (the input of each network's last ``nn.Linear``); ``kd`` is the demo's own Hinton KD
(T = 4, KD weight 0.9, cross-entropy 0.1).

**timing**: one training step of ``DistillationModule(student, teacher, losses=[method])`` against the same step
written by hand with plain torch, interleaved step by step (A B, B A, A B, …, the order swapped every step so a
shared machine's drifts and cache effects hit both alike), ``--repeats`` pairs after ``--warmup`` pairs. The two
sides start from the same weights (both built from seed 0, teachers untrained) and see the same batches, so their
losses agree at every step; the largest difference is printed as a check that the hand-written step does the same
computation. The hand-written step: the student's forward with forward hooks that keep the needed features
(without the copy that the module's hooks make so that no in-place operation can overwrite them), the teacher's
forward under ``no_grad``, ``ce_weight · CE + weight · f(...)`` with ``f`` the method's function from
``kd_probe.losses.functional`` (its learnable parts — FitNets' and VID's regressors, VID's variances — taken from
a ``DistillationModule`` built alike; CRD, whose embeddings, memory banks and negative sampling are its state, is
called as that module's loss object), backward, optimiser and scheduler step. Two drivers (``--drivers``):

- ``direct``: ``module.training_step(batch, 0)``, backward, optimiser and scheduler step, called by hand. Outside
  a Trainer, Lightning's ``self.log`` returns at once, so logging is not counted (the accuracy metric is);
- ``trainer``: the module in a real ``pl.Trainer`` (``max_steps``), timed from ``on_train_batch_start`` to
  ``on_train_batch_end`` as ``benchmarks/bench_kd_step.py`` does (forwards, losses, logging, metrics, backward,
  optimiser step), the hand-written step run in the same hooks, before or after, alternately.

Printed per method: the median milliseconds of each side, the median of the per-pair ratios module/hand with
their interquartile range, and the largest loss difference. Goal: ratio ≤ 1.10, as for logit KD
(``benchmarks/bench_kd_step.py``). CRD's memory banks have ``--timing-train-size`` rows (the demo's 4000: K = 3999
negatives per sample). A first row, ``kd (built in)``, times the demo's default path (``kd_weight``, no
``losses``) against the same hand-written step as ``kd``.

**accuracy**: the demo's recipe, smaller (defaults: ``--train-size 2000`` training images of data seed 0,
``--epochs 5`` per student, ``--teacher-epochs 10``, no probes and no validation, 1000 test images): one teacher
(seed 0) reused by every method, then for each seed of ``--seeds`` (0 1 2) a baseline student from scratch and a
distilled student per method, each after ``pl.seed_everything(seed)`` as in the demo (the same initial student
and batch order within a seed), with the demo's Trainer options (``deterministic=True``, 2 CPU threads).
Printed per method: test accuracy mean ± sd over the seeds, the per-seed differences distilled − baseline and
their mean with the 95 % t-interval over the seed pairs (``kd_probe.core.uncertainty.seed_interval``, methods
§5.8). Each run's result is written to ``--out`` (``<run>.json``, the teacher's weights in ``teacher.pt``) and
reused by a later call with the same settings.

Run: ``python benchmarks/bench_kd_methods.py [--sections timing accuracy] [--methods kd dkd ...]
[--drivers direct trainer] [--repeats 25] [--warmup 5] [--seeds 0 1 2] [--epochs 5] [--train-size 2000]
[--teacher-epochs 10] [--out DIR]`` (writes only into ``--out``, default ``$TMPDIR/kd_probe_kd_methods``; 22
minutes with the defaults on a 2-core CPU: 6 of timing, 16 of training). ``OMP_WAIT_POLICY`` is ``PASSIVE`` unless
set (see ``benchmarks/bench_seed_control.py``). Smoke test: ``python benchmarks/bench_kd_methods.py --methods kd crd
--epochs 1 --teacher-epochs 1 --train-size 256 --seeds 0 1 --repeats 3 --warmup 1 --out /tmp/kd-methods-smoke``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: see bench_seed_control.py

import argparse
import json
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _demo_setup import quiet_trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kd_probe import DistillationModule, ShapesDataModule
from kd_probe.apps.demo.methods import kd_method
from kd_probe.apps.demo.modalities import modality
from kd_probe.apps.demo.plan import add_arguments, make_plan
from kd_probe.apps.demo.run import computing_threads
from kd_probe.apps.options import FEATURE_METHODS
from kd_probe.core.uncertainty import seed_interval
from kd_probe.losses import KD, METHODS, DistillationLoss
from kd_probe.losses import functional as kd
from kd_probe.models import VGG

OPTIMIZER: dict[str, Any] = dict(optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine")  # the demo's
BUILT_IN = "kd (built in)"  # the demo's default: DistillationModule's own logit KD, no `losses`
Term = Callable[..., Tensor]

# The method's term by hand: f(loss object for its settings and parts, student features, teacher features,
# student logits, teacher logits, labels, indices, epoch), with f from kd_probe.losses.functional.
TERMS: dict[str, Term] = {
    "kd": lambda m, s, t, z, zt, y, i, e: kd.kd(z, zt, m.temperature),
    "dkd": lambda m, s, t, z, zt, y, i, e: kd.dkd(
        z, zt, y, alpha=m.alpha, beta=m.beta, temperature=m.temperature, warmup=m.warmup, epoch=e
    ),
    "dist": lambda m, s, t, z, zt, y, i, e: kd.dist(z, zt, beta=m.beta, gamma=m.gamma, temperature=m.temperature),
    "logit_standard_kd": lambda m, s, t, z, zt, y, i, e: kd.logit_standard_kd(z, zt, m.temperature),
    "fitnets": lambda m, s, t, z, zt, y, i, e: kd.fitnets([m.regressors[0](s)], [t]),
    "at": lambda m, s, t, z, zt, y, i, e: kd.at(s, t, m.beta, m.p),
    "nst": lambda m, s, t, z, zt, y, i, e: kd.nst(s, t, m.d, m.c),
    "vid": lambda m, s, t, z, zt, y, i, e: kd.vid([m.regressors[0](s)], [t], list(m.alpha), m.eps),
    "sp": lambda m, s, t, z, zt, y, i, e: kd.sp(s, t, gamma=m.gamma),
    "pkt": lambda m, s, t, z, zt, y, i, e: kd.pkt(s, t, eps=m.eps),
    "rkd": lambda m, s, t, z, zt, y, i, e: kd.rkd(s, t, distance_weight=m.distance_weight, angle_weight=m.angle_weight),
    "cc": lambda m, s, t, z, zt, y, i, e: kd.cc(s, t, gamma=m.gamma, order=m.order),
    "crd": lambda m, s, t, z, zt, y, i, e: m([s], [t], indices=i),  # its state: the loss object itself
}
assert set(TERMS) == set(METHODS), "every method of kd_probe.losses needs its hand-written term"


def _demo_arguments(*given: str) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser()).parse_args(list(given))


def _method_options(name: str, layer: str, num_samples: int) -> dict[str, Any]:
    """``DistillationModule`` options of a method as the demo sets it up, always through ``losses`` (``kd``: the
    demo's Hinton KD as ``KD(weight=0.9)`` with cross-entropy 0.1); ``BUILT_IN``: the module's own logit KD."""
    if name == BUILT_IN:
        return dict(temperature=4.0, kd_weight=0.9, ce_weight=0.1)
    if name == "kd":
        return dict(losses=[KD(temperature=4.0, weight=0.9)], ce_weight=0.1)
    options: dict[str, Any] = {"student_layers": layer, "teacher_layers": layer} if name in FEATURE_METHODS else {}
    if name == "crd":
        options["num_samples"] = num_samples
    return dict(losses=[METHODS[name](**options)], ce_weight=1.0)


# ---------------------------------------------------------------------------------------------------- timing
class HandStep:
    """The module's training step written by hand: hooks that keep features without copying them, plain torch."""

    def __init__(
        self, name: str, student: nn.Module, teacher: nn.Module, loss: DistillationLoss, ce_weight: float, steps: int
    ) -> None:
        self.name, self.student, self.teacher, self.loss, self.ce_weight = name, student, teacher, loss, ce_weight
        student.train()
        teacher.eval()
        self.term = TERMS["kd" if name == BUILT_IN else name]
        self.features: dict[str, Tensor] = {}
        if loss.kind == "feature":
            for side, network in (("student", student), ("teacher", teacher)):
                layers = getattr(loss, f"{side}_layers")
                if layers:  # a feature map: the layer's output as it is (the VGG's ReLUs are not in place)
                    network.get_submodule(layers[0]).register_forward_hook(self._keep_output(side))
                else:  # the embedding: the input of the last nn.Linear
                    linear = [m for m in network.modules() if isinstance(m, nn.Linear)][-1]
                    linear.register_forward_pre_hook(self._keep_input(side))
        parameters = [p for p in [*student.parameters(), *loss.parameters()] if p.requires_grad]
        self.optimizer = torch.optim.AdamW(parameters, lr=OPTIMIZER["lr"], weight_decay=OPTIMIZER["weight_decay"])
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)

    def _keep_output(self, side: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            self.features[side] = output

        return hook

    def _keep_input(self, side: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            self.features[side] = inputs[0].flatten(1)

        return hook

    def __call__(self, batch: Any, epoch: int | None) -> Tensor:
        inputs, labels, indices = batch[0], batch[1], batch[-1]
        logits = self.student(inputs)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        s, t = self.features.get("student"), self.features.get("teacher")
        term = self.term(self.loss, s, t, logits, teacher_logits, labels, indices, epoch)
        loss = self.ce_weight * F.cross_entropy(logits, labels) + self.loss.weight * term
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()


def _pair(
    name: str, layer: str, example: Tensor, num_samples: int, device: torch.device, steps: int
) -> tuple[DistillationModule, HandStep]:
    """The module and its hand-written twin: built alike from seed 0, so they start from the same weights; the
    twin's networks and built loss (its learnable parts) are taken from a second module."""
    built = []
    for _ in range(2):
        pl.seed_everything(0, verbose=False)
        teacher = VGG(6, widths=(32, 64, 128), convs_per_stage=2).to(device)
        student = VGG(6, widths=(16, 32, 64), convs_per_stage=2).to(device)
        options = _method_options(name, layer, num_samples)
        built.append(DistillationModule(student, teacher, **OPTIMIZER, **options, example_input=example).to(device))
    module, twin = built
    loss = cast(DistillationLoss, twin.losses[0]) if len(twin.losses) else KD(temperature=4.0, weight=0.9)
    frozen = cast(nn.Module, twin.teacher)
    return module, HandStep(name, twin.student, frozen, loss, twin.hparams["ce_weight"], steps)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_direct(
    name: str, layer: str, batches: list[Any], steps: int, num_samples: int, device: torch.device
) -> tuple[list[float], list[float], float]:
    module, hand = _pair(name, layer, batches[0][0], num_samples, device, steps)
    module.train()  # the student trains; the module keeps the teacher in eval mode
    trained = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=OPTIMIZER["lr"], weight_decay=OPTIMIZER["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)

    def module_step(batch: Any) -> Tensor:
        value = module.training_step(batch, 0)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        scheduler.step()
        return value.detach()

    sides: dict[str, Callable[[Any], Tensor]] = {"module": module_step, "hand": lambda batch: hand(batch, None)}
    times: dict[str, list[float]] = {"module": [], "hand": []}
    difference = 0.0
    for step in range(steps):
        batch = batches[step % len(batches)]
        losses = {}
        for side in ("module", "hand") if step % 2 == 0 else ("hand", "module"):
            _sync(device)
            start = time.perf_counter()
            losses[side] = sides[side](batch)
            _sync(device)
            times[side].append(time.perf_counter() - start)
        difference = max(difference, abs(float(losses["module"]) - float(losses["hand"])))
    return times["module"], times["hand"], difference


class _Interleaved(pl.Callback):
    """Times the module's steps (batch start to batch end) and runs the hand-written step on the same batch in
    the same hooks: after the module's step on even steps, before it on odd ones."""

    def __init__(self, hand: HandStep, device: torch.device) -> None:
        self.hand, self.device = hand, device
        self.times: dict[str, list[float]] = {"module": [], "hand": []}
        self.hand_losses: list[float] = []
        self.module_losses: list[float] = []
        self._start = 0.0

    def _hand(self, trainer: pl.Trainer, batch: Any) -> None:
        _sync(self.device)
        start = time.perf_counter()
        value = self.hand(batch, trainer.current_epoch + 1)  # the module passes DKD its epoch, from 1
        _sync(self.device)
        self.times["hand"].append(time.perf_counter() - start)
        self.hand_losses.append(float(value))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx % 2:
            self._hand(trainer, batch)
        _sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync(self.device)
        self.times["module"].append(time.perf_counter() - self._start)
        self.module_losses.append(float(outputs["loss"]))
        if not batch_idx % 2:
            self._hand(trainer, batch)


def _time_trainer(
    name: str, layer: str, batches: list[Any], steps: int, num_samples: int, device: torch.device, root: Path
) -> tuple[list[float], list[float], float]:
    module, hand = _pair(name, layer, batches[0][0], num_samples, device, steps)
    timer = _Interleaved(hand, device)
    repeated: Any = [batches[step % len(batches)] for step in range(steps)]  # a list of ready batches
    loader: DataLoader[Any] = DataLoader(repeated, batch_size=None, shuffle=False)
    trainer = quiet_trainer(
        max_steps=steps,
        accelerator=device.type,
        devices=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        default_root_dir=str(root),
    )
    trainer.fit(module, train_dataloaders=loader)
    difference = max(abs(a - b) for a, b in zip(timer.module_losses, timer.hand_losses, strict=True))
    return timer.times["module"], timer.times["hand"], difference


def timing(options: argparse.Namespace, methods: list[str]) -> list[dict[str, Any]]:
    """Per method and driver: the step times of both sides after the warm-up, and the largest loss difference."""
    layer = make_plan(_demo_arguments()).layer
    device = torch.device(options.device)
    data = ShapesDataModule(
        num_classes=6,
        image_size=32,
        train_size=options.timing_train_size,
        val_size=0,
        test_size=0,
        probe_size=0,
        background_bias=0.2,
        batch_size=64,
        seed=0,
        with_index=True,
    )
    steps = options.warmup + options.repeats
    torch.manual_seed(0)
    batches = []
    for batch in data.train_dataloader():  # (images, labels, masks, indices); the masks are left behind
        batches.append(tuple(batch[i].to(device) for i in (0, 1, 3)))
        if len(batches) == min(steps, 20):
            break
    rows = []
    for name in [BUILT_IN, *methods] if "kd" in methods else methods:
        for driver in options.drivers:
            began = time.perf_counter()
            if driver == "direct":
                found = _time_direct(name, layer, batches, steps, options.timing_train_size, device)
            else:
                found = _time_trainer(name, layer, batches, steps, options.timing_train_size, device, options.out)
            module_times, hand_times, difference = (found[0][options.warmup :], found[1][options.warmup :], found[2])
            ratios = [m / h for m, h in zip(module_times, hand_times, strict=True)]
            low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            row = dict(
                method=name,
                driver=driver,
                module_ms=statistics.median(module_times) * 1e3,
                hand_ms=statistics.median(hand_times) * 1e3,
                ratio=statistics.median(ratios),
                low=low,
                high=high,
                difference=difference,
                seconds=time.perf_counter() - began,
            )
            rows.append(row)
            print(
                f"  timed {name} ({driver}): {row['module_ms']:.1f} / {row['hand_ms']:.1f} ms, ratio "
                f"{row['ratio']:.3f}, {row['seconds']:.0f} s",
                flush=True,
            )
    return rows


def print_timing(rows: list[dict[str, Any]], options: argparse.Namespace) -> None:
    threads = torch.get_num_threads()
    print(
        f"\nTraining step: DistillationModule vs by hand ({options.device}, {threads} threads; batch 64 of 32 px shapes; "
        f"{options.repeats} interleaved pairs after {options.warmup}; ratio = median of the pairs' module/hand, "
        f"IQR in brackets; goal ≤ 1.10)"
    )
    drivers = options.drivers
    head = " | ".join(f"{d}: module ms | {d}: by hand ms | {d}: ratio (IQR)" for d in drivers)
    print(f"| method | {head} | max \\|Δ loss\\| |")
    print("|---|" + "---|---|---|" * len(drivers) + "---|")
    for name in dict.fromkeys(row["method"] for row in rows):
        found = {row["driver"]: row for row in rows if row["method"] == name}
        cells = " | ".join(
            f"{found[d]['module_ms']:.1f} | {found[d]['hand_ms']:.1f} | "
            f"{found[d]['ratio']:.3f} ({found[d]['low']:.2f}–{found[d]['high']:.2f})"
            + (" ⚠" if found[d]["ratio"] > 1.10 else "")
            for d in drivers
        )
        print(f"| {name} | {cells} | {max(row['difference'] for row in found.values()):.1e} |")


# ---------------------------------------------------------------------------------------------------- accuracy
def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _settings(options: argparse.Namespace) -> dict[str, Any]:
    return dict(
        train_size=options.train_size,
        epochs=options.epochs,
        teacher_epochs=options.teacher_epochs,
        threads=options.threads,
        data_seed=0,
    )


def _trainer(epochs: int, out: Path) -> pl.Trainer:
    """The demo's Trainer options (deterministic), without logger, checkpoints, probes or validation."""
    return quiet_trainer(
        max_epochs=epochs,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
        default_root_dir=str(out),
    )


def _test(trainer: pl.Trainer, module: DistillationModule, data: pl.LightningDataModule) -> float:
    (result,) = trainer.test(module, datamodule=data, verbose=False)
    return float(result["test/acc"])


def _reuse(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    if found.get("settings") != settings:
        raise SystemExit(
            f"{path} was trained with {found.get('settings')}; this call trains {settings}: choose another --out "
            "or remove it."
        )
    return found


def accuracy(options: argparse.Namespace, methods: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train (or reuse) the teacher, the baselines and the distilled students; their records."""
    settings = _settings(options)
    given = ["--epochs", str(options.epochs), "--teacher-epochs", str(options.teacher_epochs)]
    demo = _demo_arguments(*given, "--train-size", str(options.train_size), "--threads", str(options.threads))
    plan = make_plan(demo)
    kit = modality(demo, plan)
    out: Path = options.out
    out.mkdir(parents=True, exist_ok=True)
    records = []
    with computing_threads(demo.threads):
        pl.seed_everything(0, verbose=False)
        teacher = DistillationModule(kit.teacher(), **OPTIMIZER)
        teacher_record = _reuse(out / "teacher.json", settings)
        if teacher_record is None:
            began = time.perf_counter()
            trainer = _trainer(plan.teacher_epochs, out)
            trainer.fit(teacher, datamodule=kit.data)
            teacher_record = dict(
                run="teacher",
                settings=settings,
                test_accuracy=_test(trainer, teacher, kit.data),
                seconds=time.perf_counter() - began,
            )
            torch.save(teacher.student.state_dict(), out / "teacher.pt")
            (out / "teacher.json").write_text(json.dumps(teacher_record, indent=2))
        else:
            teacher.student.load_state_dict(torch.load(out / "teacher.pt", weights_only=True))
        print(f"teacher: test accuracy {teacher_record['test_accuracy']:.1%} ({teacher_record['seconds']:.0f} s)")
        for seed in options.seeds:
            for name in ["baseline", *methods]:
                run = f"{name}-s{seed}"
                record = _reuse(out / f"{run}.json", settings)
                if record is None:
                    began = time.perf_counter()
                    if isinstance(kit.data, ShapesDataModule):
                        kit.data.with_index = False  # kd_method turns it on for CRD
                    pl.seed_everything(seed, verbose=False)
                    if name == "baseline":
                        module = DistillationModule(kit.student(), **OPTIMIZER)
                    else:
                        method = kd_method(_demo_arguments("--kd-method", name), kit)
                        module = DistillationModule(kit.student(), teacher.student, **OPTIMIZER, **method)
                    trainer = _trainer(plan.epochs, out)
                    trainer.fit(module, datamodule=kit.data)
                    record = dict(
                        run=run,
                        method=name,
                        seed=seed,
                        settings=settings,
                        test_accuracy=_test(trainer, module, kit.data),
                        seconds=time.perf_counter() - began,
                    )
                    (out / f"{run}.json").write_text(json.dumps(record, indent=2))
                    print(
                        f"  trained {run}: test accuracy {record['test_accuracy']:.1%}, {record['seconds']:.0f} s",
                        flush=True,
                    )
                records.append(record)
    return teacher_record, records


def print_accuracy(teacher: dict[str, Any], records: list[dict[str, Any]], options: argparse.Namespace) -> None:
    seeds = options.seeds
    by = {(r["method"], r["seed"]): r for r in records}
    print(
        f"\nTest accuracy (1000 test images) after {_epochs(options.epochs)} on {options.train_size} training images "
        f"(data seed 0), teacher {teacher['test_accuracy']:.1%} after {_epochs(options.teacher_epochs)}; seeds "
        f"{', '.join(map(str, seeds))}; difference = distilled − baseline per seed, mean with its 95 % t-interval "
        "over the seed pairs (percentage points)"
    )
    print("| method | test accuracy mean ± sd | per-seed difference | mean difference [95 % t-interval] | s per run |")
    print("|---|---|---|---|---|")
    for name in dict.fromkeys(r["method"] for r in records):
        values = [100 * by[name, seed]["test_accuracy"] for seed in seeds]
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        seconds = statistics.fmean(by[name, seed]["seconds"] for seed in seeds)
        if name == "baseline":
            print(f"| baseline | {statistics.fmean(values):.1f}{spread} | | | {seconds:.0f} |")
            continue
        differences = [v - 100 * by["baseline", seed]["test_accuracy"] for v, seed in zip(values, seeds, strict=True)]
        found = seed_interval(differences)
        interval = f"[{found.low:+.1f}, {found.high:+.1f}]" if math.isfinite(found.low) else "(one pair: none)"
        print(
            f"| {name} | {statistics.fmean(values):.1f}{spread} | {', '.join(f'{d:+.1f}' for d in differences)} | "
            f"{found.estimate:+.1f} {interval} | {seconds:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=("timing", "accuracy"), default=["timing", "accuracy"])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        metavar="NAME",
        help=f"methods of kd_probe.losses (default all: {' '.join(METHODS)})",
    )
    parser.add_argument(
        "--drivers",
        nargs="+",
        choices=("direct", "trainer"),
        default=["direct", "trainer"],
        help="timing: training_step called by hand, and/or inside a pl.Trainer (default both)",
    )
    parser.add_argument("--repeats", type=int, default=25, help="timing: interleaved pairs measured (default 25)")
    parser.add_argument("--warmup", type=int, default=5, help="timing: pairs run first, not measured (default 5)")
    parser.add_argument(
        "--timing-train-size",
        type=int,
        default=4000,
        help="timing: CRD's memory-bank rows, the demo's training set (default 4000)",
    )
    parser.add_argument("--device", default="cpu", help="timing only (default cpu)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="accuracy: training seeds")
    parser.add_argument("--epochs", type=int, default=5, help="accuracy: epochs per student (default 5)")
    parser.add_argument("--teacher-epochs", type=int, default=10, help="accuracy: epochs of the teacher (default 10)")
    parser.add_argument("--train-size", type=int, default=2000, help="accuracy: training images (default 2000)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads, as the demo's --threads (default 2)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "kd_probe_kd_methods",
        help="folder of the accuracy runs' results (reused when it holds them)",
    )
    options = parser.parse_args()
    if options.repeats < 1 or options.warmup < 0:
        parser.error(f"--repeats must be ≥ 1 and --warmup ≥ 0, got {options.repeats} and {options.warmup}")
    methods = list(dict.fromkeys(options.methods))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*`self\.log\(\)`.*")  # training_step called without a Trainer
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`.*")  # timing
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # inside Lightning itself
    options.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"KD methods {', '.join(methods)}; student VGG(16,32,64)×2, teacher VGG(32,64,128)×2, 32 px shapes, batch 64")
    if "timing" in options.sections:
        began = time.perf_counter()
        with computing_threads(options.threads):
            rows = timing(options, methods)
        print_timing(rows, options)
        print(f"timing: {time.perf_counter() - began:.0f} s")
    if "accuracy" in options.sections:
        began = time.perf_counter()
        print(
            f"\naccuracy: the demo's recipe, smaller: {options.train_size} training images, students "
            f"{_epochs(options.epochs)}, teacher {_epochs(options.teacher_epochs)}, no probes, no validation; seeds "
            f"{', '.join(map(str, options.seeds))}; results in {options.out}"
        )
        teacher, records = accuracy(options, methods)
        print_accuracy(teacher, records, options)
        print(f"accuracy: {time.perf_counter() - began:.0f} s")
    print(f"\nwall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
