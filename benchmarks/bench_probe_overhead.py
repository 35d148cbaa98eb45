"""Cost of a KnowledgePointProbe relative to training, in the demo's configuration.

One run trains the demo's distilled student (VGG(16,32,64)×2 with a VGG(32,64,128)×2 teacher, 32 px
built-in images, 4000 training images, batch 64, AdamW) for a few epochs without the probe, then the same
run with a ``KnowledgePointProbe`` probing every epoch (and epoch 0). It prints the training time, the
time spent in the probe (measured around each probe), the fraction probe / training, and the same
fraction extrapolated to the paper's schedule (15 checkpoints).

Cost model: one probe costs about ``N × samples × (steps_run + 1)`` forward + input-gradient passes of one
image to the probed layer, with ``steps_run = steps − 20`` for images that reach the target entropy by step
``steps − 21`` (the usual case) and ``steps`` otherwise.

Run: ``python benchmarks/bench_probe_overhead.py [--epochs 3] [--probe-images 16] [--samples 32]``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import lightning.pytorch as pl
import torch
from _demo_setup import demo_data, demo_distillation_module, quiet_trainer, timed

from kd_probe import KnowledgePointProbe, ShapesDataModule


def _fit(data: ShapesDataModule, epochs: int, callbacks: list[pl.Callback]) -> float:
    module = demo_distillation_module()
    trainer = quiet_trainer(max_epochs=epochs, num_sanity_val_steps=0, callbacks=callbacks)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--probe-images", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--layer", default="features.bn6")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = demo_data(probe_size=args.probe_images)
    plain = _fit(data, args.epochs, [])
    probe = timed(KnowledgePointProbe)(data, layer=args.layer, every_n_epochs=1, samples=args.samples, steps=args.steps)
    probed = _fit(data, args.epochs, [probe])
    probe_seconds = sum(probe.seconds)
    print(
        f"threads={torch.get_num_threads()}; demo student, {args.epochs} epochs of 4000 images; probe: "
        f"{args.probe_images} images, layer {args.layer}, samples {args.samples}, steps {args.steps}"
    )
    print(f"training without probe      {plain:8.1f} s")
    print(f"training with probe         {probed:8.1f} s  (of which probing {probe_seconds:.1f} s)")
    print(f"probes                      {len(probe.seconds):8d}    {probe_seconds / len(probe.seconds):.1f} s each")
    per_epoch = plain / args.epochs
    print(
        f"probe / training time       {probe_seconds / plain:8.2f}   (probe every epoch; training = the run without probe)"
    )
    print(
        f"one probe / one epoch       {probe_seconds / len(probe.seconds) / per_epoch:8.2f}   "
        f"(the paper's 15 checkpoints over a 150-epoch run: {15 * probe_seconds / len(probe.seconds) / (150 * per_epoch):.3f})"
    )


if __name__ == "__main__":
    main()
