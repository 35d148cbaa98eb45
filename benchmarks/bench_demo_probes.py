"""The demo's knowledge-point probe before and after issue 15, timed side by side in one run.

**old** is ``kd-probe demo --method faithful``: faithful σ maps (methods §1.2) of 10 probe images with 16 noise
samples per step — the demo's probe until issue 15. **new** is the demo's probe now (``kd_probe/apps/demo/plan.py``:
secant, methods §1.8, 40 images, 2 passes × 64 samples); ``--candidates PxS ...`` adds secant presets of P passes ×
S samples on the same images as new, to choose it. Every setting is exactly what the demo's
``KnowledgePointProbe`` passes to ``estimate_sigma_maps``, on the demo's probe images (seed 0).

The networks are the demo's student VGG(16,32,64)×2 at its initialisation (what the epoch-0 probe sees) and the
same network trained ``--epochs`` epochs from scratch with the demo's recipe (the baseline run). Per network,
``--rounds`` rounds each run every setting once on its whole probe set, the order rotated each round, so a
shared machine's drifts hit all alike. Printed per setting: seconds per probe (median of the rounds) and the
ratio to old (total over the rounds; range: the rounds' own ratios); and, against the paper's maps (faithful,
96 samples, noise seed 1) of the 10 images old probes (the first 10 of every set: a map depends only on its
image and its index, not on the other images), the knowledge-point IoU at b = 0.2 (dataset baseline over the
10 images, points pooled), ``|Δ fg_ratio|`` and the Pearson correlation of the entropy maps; with ``--flops``, the convolution FLOPs of one
untimed run of each setting (forwards and input-gradient backwards, ``torch.utils.flop_counter``): the work
itself, which a busy machine does not change. The demo's goal:
new ≥ 4× the images of old at a ratio ≤ 1.

Run: ``python benchmarks/bench_demo_probes.py [--epochs 10] [--rounds 3] [--candidates 2x96 1x128] [--flops]``
(writes nothing; about 4 minutes on a 2-core CPU with the defaults).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from _demo_setup import demo_data, quiet_trainer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kd_probe import DistillationModule, ShapesDataModule, SigmaMaps, count_knowledge_points, estimate_sigma_maps
from kd_probe.apps.demo.plan import Plan, add_arguments, make_plan, sigma_options
from kd_probe.callbacks._common import read_probe_set
from kd_probe.models import VGG

SHARED = 10  # the images every setting probes: old's whole set


def _plan(*options: str) -> Plan:
    return make_plan(add_arguments(argparse.ArgumentParser()).parse_args(list(options)))


def _settings(candidates: list[str]) -> dict[str, tuple[int, dict[str, Any]]]:
    """Label → (probe images, σ options) of old, new and each candidate."""
    old, new = _plan("--method", "faithful"), _plan()
    settings = {"old": (old.probe_images, sigma_options(old)), "new": (new.probe_images, sigma_options(new))}
    for candidate in candidates:
        passes, samples = (int(part) for part in candidate.lower().split("x"))
        plan = _plan("--passes", str(passes), "--samples", str(samples))
        settings[f"secant {passes}×{samples}"] = (plan.probe_images, sigma_options(plan))
    return settings


def _networks(data: ShapesDataModule, epochs: int, wanted: list[str]) -> dict[str, nn.Module]:
    """The demo's baseline student at initialisation and after ``epochs`` epochs of the demo's recipe."""
    plan = _plan()
    pl.seed_everything(0, verbose=False)
    student = VGG(6, widths=plan.student_widths, convs_per_stage=2)
    initial = copy.deepcopy(student).eval()
    if "trained" not in wanted:
        return {"initial (epoch 0)": initial}
    module = DistillationModule(student, optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine")
    start = time.perf_counter()
    quiet_trainer(max_epochs=epochs, num_sanity_val_steps=0, deterministic=True).fit(module, datamodule=data)
    print(f"trained the demo's student {epochs} epochs in {time.perf_counter() - start:.0f} s", flush=True)
    return {"initial (epoch 0)": initial, f"trained ({epochs} epochs)": student.eval()}


def _agreement(reference: SigmaMaps, maps: SigmaMaps, masks: torch.Tensor) -> tuple[float, float, float]:
    """Knowledge-point IoU at b = 0.2, |Δ fg_ratio| and entropy Pearson of ``maps`` against ``reference``."""
    a = count_knowledge_points(reference.entropy, masks, effective=reference.effective)
    b = count_knowledge_points(maps.entropy, masks, effective=maps.effective)
    union = int((a.points | b.points).sum())
    both = reference.effective & maps.effective
    pair = torch.stack([reference.entropy[both].flatten(), maps.entropy[both].flatten()]).double()
    iou = int((a.points & b.points).sum()) / union if union else 1.0
    return iou, abs(a.fg_ratio - b.fg_ratio), float(torch.corrcoef(pair)[0, 1])


def _compare(name: str, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, args: argparse.Namespace) -> None:
    settings = _settings(args.candidates)
    labels = list(settings)
    times: dict[str, list[float]] = {label: [] for label in labels}
    maps: dict[str, SigmaMaps] = {}
    for _, options in settings.values():  # warm-up: allocator, kernels, the fx trace
        short = {**options, "steps": 2, **({"passes": 1} if "passes" in options else {})}
        estimate_sigma_maps(model, images[:2], seed=0, **short)
    for round_ in range(args.rounds):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            count, options = settings[label]
            start = time.perf_counter()
            maps[label] = estimate_sigma_maps(model, images[:count], seed=0, **options)
            times[label].append(time.perf_counter() - start)
        print(f"  {name}: round {round_ + 1}/{args.rounds} done", flush=True)
    flops: dict[str, float] = {}
    for label in labels if args.flops else []:  # the work itself, which a busy machine does not change
        count, options = settings[label]
        with FlopCounterMode(display=False) as counter:
            estimate_sigma_maps(model, images[:count], seed=0, **options)
        flops[label] = counter.get_total_flops() / 1e9

    agreement: dict[str, tuple[float, float, float]] = {}
    if not args.no_reference:
        _, old_options = settings["old"]
        reference = estimate_sigma_maps(
            model, images[:SHARED], seed=1, **{**old_options, "method": "faithful", "samples": 96}
        )
        for label in labels:
            shared = {name: tensor[:SHARED] for name, tensor in maps[label].tensors().items()}
            agreement[label] = _agreement(reference, SigmaMaps(**shared, method=maps[label].method), masks[:SHARED])

    print(f"\n{name}: layer {settings['old'][1]['layer']}")
    extra = (" GFLOP (ratio) |", "---|") if args.flops else ("", "")
    print(
        f"| setting | images | σ options | s per probe | ratio to old (range) | IoU b=0.2 | |Δ fg_ratio| | Pearson |{extra[0]}"
    )
    print(f"|---|---|---|---|---|---|---|---|{extra[1]}")
    for label in labels:
        count, options = settings[label]
        shown = ", ".join(f"{k}={v}" for k, v in options.items() if k not in ("layer", "grid", "steps"))
        total = sum(times[label]) / sum(times["old"])
        ratios = [t / o for t, o in zip(times[label], times["old"], strict=True)]
        quality = " | ".join(f"{v:.3f}" for v in agreement[label]) if agreement else "– | – | –"
        work = f" {flops[label]:.1f} ({flops[label] / flops['old']:.2f}) |" if flops else ""
        print(
            f"| {label} | {count} | {shown} | {statistics.median(times[label]):.2f} | "
            f"{total:.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | {quality} |{work}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the trained network (the demo's: 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--candidates", nargs="*", default=[], help="secant presets PxS to time beside old and new")
    parser.add_argument("--networks", nargs="+", choices=("initial", "trained"), default=["initial", "trained"])
    parser.add_argument("--flops", action="store_true", help="also count each setting's convolution FLOPs")
    parser.add_argument("--no-reference", action="store_true", help="skip the faithful-96 reference maps")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    count = max(images for images, _ in _settings(args.candidates).values())
    data = demo_data(probe_size=count)
    images, masks, _ = read_probe_set(data)
    assert masks is not None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {count} probe images", flush=True)
    for name, model in _networks(data, args.epochs, args.networks).items():
        if name.split()[0] in args.networks:
            _compare(name, model, images, masks, args)


if __name__ == "__main__":
    main()
