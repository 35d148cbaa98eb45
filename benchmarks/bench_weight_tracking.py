"""Per-step cost of weight tracking during a demo training step.

The demo's distillation step (student VGG(16,32,64)×2, teacher VGG(32,64,128)×2, batch 64, 32 px,
AdamW) is timed by a callback from ``on_train_batch_start`` to ``on_train_batch_end`` — everything
Lightning does for the step — while the trackers' own per-step work (run in ``on_train_batch_end``, after
that timer) is timed separately:

- ``probe path length``: what a ``KnowledgePointProbe`` does after every optimizer step (copy the probed
  layer's weight, one norm of the difference);
- ``trajectory monitor``: ``WeightTrajectoryMonitor()`` with its defaults (every top-level child of the
  student, every step), and with ``projection=4096``.

Goal: the probe's per-step tracking of one layer costs < 2 % of a training step.
Run: ``python benchmarks/bench_weight_tracking.py [--steps 60]``.
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
from _demo_setup import demo_distillation_module, quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from kd_probe import KnowledgePointProbe, WeightTrajectoryMonitor


class _StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._start)


class _Timed(pl.Callback):
    """Runs another callback's on_train_batch_end under a stopwatch."""

    def __init__(self, inner: pl.Callback) -> None:
        self.inner, self.times = inner, []

    def __getattribute__(self, name: str) -> Any:
        if (name.startswith("on_") and name != "on_train_batch_end") or name in (
            "setup",
            "state_dict",
            "load_state_dict",
        ):
            return getattr(object.__getattribute__(self, "inner"), name)
        return object.__getattribute__(self, name)

    def on_train_batch_end(self, *args: Any) -> None:
        start = time.perf_counter()
        self.inner.on_train_batch_end(*args)
        self.times.append(time.perf_counter() - start)


def _run(tracker: pl.Callback, steps: int) -> tuple[list[float], list[float]]:
    module = demo_distillation_module()
    g = torch.Generator().manual_seed(0)
    n = 64 * steps
    images = torch.randn(n, 3, 32, 32, generator=g)
    data = TensorDataset(images, torch.randint(6, (n,), generator=g), torch.ones(n, 32, 32))
    timer, timed = _StepTimer(), _Timed(tracker)
    trainer = quiet_trainer(max_steps=steps, limit_val_batches=0, callbacks=[timer, timed])
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=64))
    return timer.times[3:], timed.times[3:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    probe_images = torch.randn(4, 3, 32, 32)
    trackers = {
        "probe path length (features.bn6 -> conv6)": KnowledgePointProbe(
            probe_images, torch.ones(4, 32, 32), layer="features.bn6", epochs=[], samples=2, steps=2
        ),
        "trajectory monitor (features, head)": WeightTrajectoryMonitor(),
        "trajectory monitor, projection=4096": WeightTrajectoryMonitor(projection=4096),
    }
    print(f"threads={torch.get_num_threads()}; demo distillation step, batch 64, 32 px; {args.steps} steps each")
    print(f"{'tracker':<44}{'step ms':>9}{'tracking ms':>13}{'share':>8}")
    for name, tracker in trackers.items():
        steps, tracking = _run(tracker, args.steps)
        step_ms, track_ms = statistics.median(steps) * 1e3, statistics.median(tracking) * 1e3
        print(f"{name:<44}{step_ms:>9.2f}{track_ms:>13.3f}{100 * track_ms / step_ms:>7.2f}%")
    print("goal: probe path length < 2 % of a step")


if __name__ == "__main__":
    main()
