"""Cost of a UniCAMProbe relative to training, and what caching the teacher side saves, in the demo's set-up.

Trains the demo's distilled student (VGG(16,32,64)×2 from a VGG(32,64,128)×2 teacher, 32 px built-in images,
4000 training images, batch 64, AdamW) for a few epochs with a ``UniCAMProbe`` at every stage (64 held-out
validation images, maps at ``features.relu6``) probing every epoch and epoch 0, with a stopwatch around each
probe. Then, on the trained module, it times probes side by side in rounds: the probe as shipped (teacher
features cached) against the same probe with its cache dropped before each call (teacher recomputed).

Run: ``python benchmarks/bench_unicam.py [--epochs 3] [--images 64] [--rounds 10]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
from _demo_setup import demo_data, demo_distillation_module, quiet_trainer, timed
from torch.utils.data import Subset

from kd_probe import UniCAMProbe

STAGES = ["features.relu2", "features.relu4", "features.relu6"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data = demo_data()
    images = Subset(data.val_set, range(args.images))
    probe = timed(UniCAMProbe)(images, layers=STAGES, cam_layer=STAGES[-1], normalization=(data.mean, data.std))
    module = demo_distillation_module()
    trainer = quiet_trainer(max_epochs=args.epochs, num_sanity_val_steps=0, callbacks=[probe])
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    total = time.perf_counter() - start
    probing, probes = sum(probe.seconds), len(probe.seconds)
    training = total - probing
    cached, uncached = [], []
    for index in range(args.rounds):  # interleaved, so drifts of the machine's speed hit both alike
        for times, drop in ((cached, False), (uncached, True)):
            if drop:
                probe._cache = None
            start = time.perf_counter()
            probe.probe(trainer, module, 1000 + index)
            times.append(time.perf_counter() - start)
    cached_s, uncached_s = statistics.median(cached), statistics.median(uncached)
    print(
        f"threads={torch.get_num_threads()}; demo student, {args.epochs} epochs of 4000 images; UniCAMProbe: "
        f"{args.images} images, {len(STAGES)} layer pairs, maps at {STAGES[-1]}"
    )
    print(f"training (without probing)  {training:8.1f} s   {training / args.epochs:.1f} s per epoch")
    print(f"probes during training      {probes:8d}     {probing / probes:.3f} s each")
    print(f"one probe / one epoch       {probing / probes / (training / args.epochs):8.4f}")
    print(f"probe, teacher cached       {cached_s:8.3f} s  (median of {args.rounds})")
    print(f"probe, teacher recomputed   {uncached_s:8.3f} s  (median of {args.rounds})")
    print(f"caching speed-up            {uncached_s / cached_s:8.2f}x")


if __name__ == "__main__":
    main()
