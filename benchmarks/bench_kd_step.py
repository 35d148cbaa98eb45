"""Overhead of a DistillationModule training step over the bare work it has to do.

Measured side by side in one run, interleaved in rounds, medians of per-step times:

- ``module``: one training step of ``DistillationModule`` driven by a real ``pl.Trainer`` (timed from
  ``on_train_batch_start`` to ``on_train_batch_end``: forward passes, losses, logging, torchmetrics,
  backward, optimiser and scheduler step);
- ``bare``: the same work written by hand: student forward + backward, teacher forward under
  ``no_grad``, the same loss and optimiser step.

Goal: ``module / bare ≤ 1.10``. Run: ``python benchmarks/bench_kd_step.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kd_probe import DistillationModule
from kd_probe.functional import feature_distillation_loss, logit_distillation_loss
from kd_probe.models import VGG


class _StepTimer(pl.Callback):
    def __init__(self, device: torch.device) -> None:
        self.device, self.times, self._start = device, [], 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, *args: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self._start)


def _models(classes: int, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    teacher = VGG(classes, widths=(32, 64, 128), convs_per_stage=2).to(device).eval().requires_grad_(False)
    student = VGG(classes, widths=(16, 32, 64), convs_per_stage=1).to(device)
    return teacher, student


def _module_steps(feature: bool, loader: DataLoader, steps: int, device: torch.device) -> list[float]:
    teacher, student = _models(6, device)
    pairs = {"features.conv3": "features.conv6"} if feature else None
    module = DistillationModule(student, teacher, feature_pairs=pairs, example_input=(3, 32, 32))
    timer = _StepTimer(device)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator=device.type,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.times[2:]  # the first steps warm up allocators and kernels


def _bare_steps(feature: bool, loader: DataLoader, steps: int, device: torch.device) -> list[float]:
    teacher, student = _models(6, device)
    adapter = torch.nn.Conv2d(64, 128, 1, bias=False).to(device)
    params = list(student.parameters()) + (list(adapter.parameters()) if feature else [])
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    features: dict[str, torch.Tensor] = {}
    if feature:
        student.features.conv3.register_forward_hook(lambda m, i, o: features.__setitem__("s", o))
        teacher.features.conv6.register_forward_hook(lambda m, i, o: features.__setitem__("t", o))
    times = []
    batches = iter(loader)
    for _ in range(steps):
        x, y = (t.to(device) for t in next(batches))
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = student(x)
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = 0.1 * F.cross_entropy(logits, y) + 0.9 * logit_distillation_loss(logits, teacher_logits, 4.0)
        if feature:
            loss = loss + feature_distillation_loss(adapter(features["s"]), features["t"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25, help="steps per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * (args.steps + 2)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(6, (n,), generator=g))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, drop_last=True)
    print(f"device={device} batch={args.batch_size} 32x32 px; teacher VGG(32,64,128)x2, student VGG(16,32,64)x1")
    print(f"{'config':<22}{'module ms':>11}{'bare ms':>10}{'ratio':>8}  goal <= 1.10")
    for feature in (False, True):
        module_times: list[float] = []
        bare_times: list[float] = []
        for _ in range(args.rounds):  # interleaved, so drifts of the machine hit both sides alike
            module_times += _module_steps(feature, loader, args.steps + 2, device)
            bare_times += _bare_steps(feature, loader, args.steps + 2, device)
        module_ms, bare_ms = statistics.median(module_times) * 1e3, statistics.median(bare_times) * 1e3
        name = "logit + feature KD" if feature else "logit KD"
        print(f"{name:<22}{module_ms:>11.2f}{bare_ms:>10.2f}{module_ms / bare_ms:>8.3f}")


if __name__ == "__main__":
    main()
