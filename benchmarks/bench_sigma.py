"""Speed of the σ-map engine against the straightforward per-image oracle, and against the machine.

Measured side by side in one run, interleaved in rounds (a block of images through the oracle, the same
block through the library, then a pure convolution), so drifts of a shared machine hit every side alike:

- ``oracle``: :func:`benchmarks.sigma_oracle.oracle_sigma_maps`, spec §1.2 written the obvious way (one
  image at a time, full forward with a hook, ``torch.optim.SGD`` on σ);
- ``library``: :func:`kd_probe.estimate_sigma_maps` (images batched, forward stopped at the layer,
  channels-last inputs, only the input gradient computed);
- ``conv``: the machine's convolution throughput, a 64→64 3×3 convolution forward on 32×32 channels-last
  inputs, batch 128.

Both produce the same maps from the same per-image noise; the table shows how close they are. The
library's GFLOP/s counts the convolution/linear FLOPs of the forwards to the layer and the input-gradient
backwards it ran (``torch.utils.flop_counter``), over its wall time.

Goals (2-core CPU): library ≥ 2× the oracle's maps/s with identical maps; library ≥ 40 % of the conv
throughput. Run: ``python benchmarks/bench_sigma.py [--device cuda] [--images 32] [--samples 96]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `benchmarks.sigma_oracle`

from benchmarks.sigma_oracle import oracle_sigma_maps
from kd_probe import ShapesDataModule, count_knowledge_points, estimate_sigma_maps
from kd_probe.core.sigma import BOOST_STEPS, gaussian_entropy
from kd_probe.functional import forward_until
from kd_probe.models import VGG


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, work: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    _sync(device)
    start = time.perf_counter()
    result = work(*args, **kwargs)
    _sync(device)
    return time.perf_counter() - start, result


def _row_flops(model: torch.nn.Module, layer: str, images: torch.Tensor) -> float:
    """FLOPs of one perturbed image: forward to the layer plus the gradient with respect to the input."""
    frozen = copy.deepcopy(model).requires_grad_(False)  # so that only the input gradient is computed
    x = images[:2].clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        forward_until(frozen, layer, x).relu().square().sum().backward()
    return counter.get_total_flops() / 2


def _conv_gflops(device: torch.device, seconds: float = 1.0) -> float:
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).eval()
    x = torch.randn(128, 64, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        conv(x)
        _sync(device)
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            conv(x)
            runs += 1
        _sync(device)
        elapsed = time.perf_counter() - start
    return 2 * 128 * 32 * 32 * 64 * 64 * 9 * runs / elapsed / 1e9


def _compare(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    layer: str,
    args: argparse.Namespace,
    device: torch.device,
) -> None:
    options = dict(layer=layer, grid=args.grid, samples=args.samples, steps=args.steps)
    times = {"oracle": 0.0, "library": 0.0}
    conv_rates, oracle_parts, library_parts = [], [], []
    for first in range(0, args.images, args.block):
        block = images[first : first + args.block]
        elapsed, result = _timed(device, oracle_sigma_maps, model, block, first_index=first, **options)
        times["oracle"] += elapsed
        oracle_parts.append(result)
        indices = list(range(first, first + block.shape[0]))
        elapsed, maps = _timed(device, estimate_sigma_maps, model, block, indices=indices, **options)
        times["library"] += elapsed
        library_parts.append(maps)
        conv_rates.append(_conv_gflops(device))
        print(
            f"  images {first:>3}-{first + block.shape[0] - 1:<3} oracle {times['oracle']:7.1f} s   "
            f"library {times['library']:7.1f} s",
            flush=True,
        )

    oracle_sigma = torch.cat([part[0] for part in oracle_parts]).cpu()
    oracle_steps = torch.cat([part[1] for part in oracle_parts])
    maps = [m.to("cpu") for m in library_parts]
    sigma = torch.cat([m.sigma for m in maps])
    steps_run = torch.where(torch.cat([m.boosted for m in maps]), args.steps, args.steps - BOOST_STEPS)
    rows = args.images * args.samples + int(steps_run.sum()) * args.samples  # σ_f samples + optimisation
    flops = rows * _row_flops(model, layer, images)
    conv = sorted(conv_rates)[len(conv_rates) // 2]
    count = args.images
    print(f"\nlayer {layer}: {flops / rows / 1e6:.1f} MFLOP per perturbed image (forward + input gradient)")
    print(f"{'':<12}{'maps/s':>10}{'s/map':>10}{'GFLOP/s':>10}")
    for name in ("oracle", "library"):
        print(f"{name:<12}{count / times[name]:>10.3f}{times[name] / count:>10.3f}{flops / times[name] / 1e9:>10.1f}")
    print(f"ratio library/oracle: {times['oracle'] / times['library']:.2f}x   (goal >= 2)")
    print(
        f"conv throughput (64->64 3x3, 32x32, batch 128, median of rounds): {conv:.1f} GFLOP/s; "
        f"library reaches {100 * flops / times['library'] / 1e9 / conv:.0f} %   (goal >= 40 %)"
    )
    entropy, oracle_entropy = gaussian_entropy(sigma), gaussian_entropy(oracle_sigma)
    same_steps = int((torch.cat([m.step for m in maps]) == oracle_steps).sum())
    a = count_knowledge_points(entropy, masks).points
    b = count_knowledge_points(oracle_entropy, masks).points
    same_points = int((a == b).flatten(1).all(1).sum())
    print(
        f"same maps: max |d sigma| = {float((sigma - oracle_sigma).abs().max()):.2e}, "
        f"max |d H| = {float((entropy - oracle_entropy).abs().max()):.2e} nats, selected step equal "
        f"{same_steps}/{count}, knowledge points equal {same_points}/{count}\n",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--block", type=int, default=8, help="images per interleaved round")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument(
        "--layers",
        nargs="+",
        default=["features.bn6", "features.bn4"],
        help="probed layers (default: the last conv block's pre-ReLU output, as the paper, and a middle one)",
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="train the CNN briefly first, so BatchNorm is not the identity"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    data = ShapesDataModule(num_classes=6, image_size=32, train_size=1024, probe_size=args.images, batch_size=64)
    model = _trained_model(data, args.epochs, device)
    images = torch.stack([data.probe_set[i][0] for i in range(args.images)]).to(device)
    masks = torch.stack([data.probe_set[i][2] for i in range(args.images)])
    print(
        f"device={device}, threads={torch.get_num_threads()}; VGG(16,32,64)x2 trained {args.epochs} epochs; "
        f"{args.images} built-in images 32x32 px; grid {args.grid}, samples {args.samples}, steps {args.steps}"
    )
    for layer in args.layers:
        _compare(model, images, masks, layer, args, device)


def _trained_model(data: ShapesDataModule, epochs: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = VGG(num_classes=6, widths=(16, 32, 64), convs_per_stage=2).to(device)
    data.setup("fit")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for images, labels, _ in data.train_dataloader():
            loss = torch.nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


if __name__ == "__main__":
    main()
