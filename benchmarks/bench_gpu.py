"""σ maps at researcher scale on one GPU (issue 32), side by side in one run:

- the card's own peaks, measured here: a bf16 and a TF32 matmul, and a bf16 convolution;
- per case — the demo's VGG at 32 px, a ResNet-18 (the look-alike with torchvision's names and in-place ReLUs)
  at 64 and 224 px — and per engine (faithful, secant): maps per second, the achieved TFLOP/s (the FLOPs of a
  map, counted by ``torch.utils.flop_counter`` over every pass the engine runs on two images, times maps per
  second), the peak memory, and the perturbed inputs per pass the engine chose;
- the same with the earlier default batch (4096 perturbed inputs per pass), for the memory the automatic batch
  saves and what it costs in speed;
- the per-image procedure of the paper (``benchmarks/sigma_oracle.py``: one image at a time, SGD on σ);
- the share of a ResNet-18 224-px KD epoch (10 000 images, batch 128, ResNet-18 teacher and student) that a
  probe of 16 faithful or secant maps costs;
- what reproduces across devices: GPU maps against CPU maps of the same seed (knowledge-point IoU, largest |Δσ|)
  with the GPU's own noise and with ``noise_device="cpu"`` (the CPU's noise, copied), and what that costs;
- per case and engine, the σ engine's ``precision`` (methods §4.6): maps per second with ``"float32"`` (TF32 off),
  ``"tf32"`` and ``"bf16"``, and against the float32 maps of the same seed their knowledge-point IoU (b = 0.2) and
  ``|Δ fg_ratio|`` (a centred square as the foreground), next to float32 with seed 1 (the seed-to-seed floor).

Run: ``python benchmarks/bench_gpu.py`` (about 5 minutes on one H200 before the precision comparison, which adds
four timed runs per case and engine); ``--smoke`` runs tiny sizes on any
device to check the script (the CPU's figures mean nothing). Goals on an H200 (issue 32): faithful at 224 px
≥ 8 maps/s, secant ≥ 25 maps/s, the demo VGG faithful ≥ 150 maps/s, peak memory ≤ 12 GiB at 224 px within 10 %
of the earlier default's speed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sigma_oracle import oracle_sigma_maps
from kd_probe import SigmaMaps, count_knowledge_points, estimate_sigma_maps
from kd_probe.core._sigma_engines import SampledObjective
from kd_probe.models import VGG
from tests.lookalikes import resnet18_like


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(device: torch.device, work: Callable[[], Any], repeats: int = 3) -> float:
    work()  # warm-up (kernels chosen, caches filled)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        work()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def peaks(device: torch.device, size: int) -> dict[str, float]:
    """TFLOP/s of a square bf16 and TF32 matmul of side ``size`` and of a bf16 3×3 convolution."""
    found = {}
    for name, dtype, tf32 in (("matmul bf16", torch.bfloat16, False), ("matmul tf32", torch.float32, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        found[name] = 2 * size**3 / _best_seconds(device, lambda a=a, b=b: a @ b) / 1e12
    torch.backends.cuda.matmul.allow_tf32 = False
    channels, side = (256, 56) if size >= 4096 else (16, 8)
    x = torch.randn(64, channels, side, side, device=device, dtype=torch.bfloat16)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device, torch.bfloat16)
    flops = 2 * 64 * channels * channels * 9 * side * side
    with torch.no_grad():
        found["conv bf16"] = flops / _best_seconds(device, lambda: conv(x)) / 1e12
    return found


def cases(smoke: bool) -> list[tuple[str, nn.Module, str, int, float]]:
    """(name, network, layer, image side, λ) of each case."""
    torch.manual_seed(0)
    vgg = VGG(num_classes=6, widths=(16, 32, 64), convs_per_stage=2)
    resnet = resnet18_like(num_classes=1000, width=8 if smoke else 64)
    sides = (16, 32) if smoke else (64, 224)
    return [
        ("demo VGG, 32 px", vgg, "features.bn6", 16 if smoke else 32, 7.0),
        (f"ResNet-18, {sides[0]} px", resnet, "layer4.1.bn2", sides[0], 6.0),
        (f"ResNet-18, {sides[1]} px", resnet, "layer4.1.bn2", sides[1], 6.0),
    ]


def flops_per_map(
    model: nn.Module, images: Tensor, layer: str, lam: float, method: str, options: dict[str, Any]
) -> float:
    """FLOPs of one σ map, counted by ``torch.utils.flop_counter`` over the maps of ``images`` (every forward and
    backward the engine runs, early stops included)."""
    with FlopCounterMode(display=False) as counter:
        estimate_sigma_maps(model, images, layer=layer, method=method, lam=lam, **options)
    return float(counter.get_total_flops()) / images.shape[0]


_CHOSEN: list[int] = []
_set_max_batch = SampledObjective.set_max_batch


def _recording(self: SampledObjective, max_batch: int) -> None:
    _CHOSEN.append(max_batch)
    _set_max_batch(self, max_batch)


SampledObjective.set_max_batch = _recording  # type: ignore[method-assign]  # the batch each call ends with


def measure_maps(
    model: nn.Module, images: Tensor, layer: str, lam: float, method: str, options: dict[str, Any]
) -> tuple[dict[str, Any], SigmaMaps]:
    """Maps per second, peak memory (GiB) and the perturbed inputs per pass the engine ended with; the maps."""
    device = images.device
    estimate_sigma_maps(model, images[:1], layer=layer, method=method, lam=lam, **options)  # warm-up
    _CHOSEN.clear()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    maps = estimate_sigma_maps(model, images, layer=layer, method=method, lam=lam, **options)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"maps_per_s": images.shape[0] / seconds, "seconds": seconds, "peak_gib": peak, "batch": _CHOSEN[-1]}, maps


PRECISIONS: dict[str, dict[str, Any]] = {  # "floor": float32 with another seed
    "float32": {"precision": "float32"},
    "floor": {"precision": "float32", "seed": 1},
    "tf32": {"precision": "tf32"},
    "bf16": {"precision": "bf16"},
}


def precision_figures(
    model: nn.Module, images: Tensor, layer: str, lam: float, method: str, options: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Per ``precision`` (float32, tf32, bf16; "floor": float32 with seed 1): maps per second and, against the float32
    maps of seed 0, the knowledge-point IoU (b = 0.2) and ``|Δ fg_ratio|``, a centred square as the foreground."""
    side = images.shape[-1]
    masks = torch.zeros(images.shape[0], side, side)
    masks[:, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 1
    found, points = {}, {}
    for label, extra in PRECISIONS.items():
        timing, maps = measure_maps(model, images, layer, lam, method, {**options, **extra})
        found[label] = {"maps_per_s": timing["maps_per_s"]}
        points[label] = count_knowledge_points(maps.entropy.cpu(), masks, effective=maps.effective.cpu())
    reference = points["float32"]
    for label in ("floor", "tf32", "bf16"):
        union = int((reference.points | points[label].points).sum())
        found[label]["iou"] = float((reference.points & points[label].points).sum()) / union if union else 1.0
        found[label]["fg"] = abs(reference.fg_ratio - points[label].fg_ratio)
    return found


def epoch_seconds(device: torch.device, side: int, smoke: bool) -> float:
    """Seconds of a ResNet-18 → ResNet-18 KD epoch of 10 000 images at batch 128 (from 5 timed steps)."""
    torch.manual_seed(0)
    width = 8 if smoke else 64
    teacher, student = resnet18_like(1000, width=width).to(device).eval(), resnet18_like(1000, width=width).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    batch = 8 if smoke else 128
    x, y = torch.randn(batch, 3, side, side, device=device), torch.randint(1000, (batch,), device=device)

    def step() -> None:
        with torch.no_grad():
            target = teacher(x).div(4).softmax(dim=1)
        logits = student(x)
        loss = (
            nn.functional.cross_entropy(logits, y)
            + nn.functional.kl_div(logits.div(4).log_softmax(dim=1), target, reduction="batchmean") * 16
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    per_step = _best_seconds(device, lambda: [step() for _ in range(5)], repeats=1) / 5
    return per_step * 10_000 / batch


def reproducibility(device: torch.device, smoke: bool, sigma: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """GPU maps against CPU maps of the same seed, on the demo VGG at 32 px (4 images): knowledge-point IoU and the
    largest |Δσ|, with the GPU's own noise and with ``noise_device="cpu"``, and what drawing on the CPU costs."""
    torch.manual_seed(0)
    network = VGG(num_classes=6, widths=(16, 32, 64), convs_per_stage=2).eval()
    side = 16 if smoke else 32
    images = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(5))
    masks = torch.zeros(4, side, side)
    masks[:, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 1
    on_cpu = {m: estimate_sigma_maps(network, images, layer="features.bn6", method=m, **sigma[m]) for m in sigma}
    on_device, device_images = network.to(device), images.to(device)
    rows = []
    for method, cpu in on_cpu.items():
        cpu_points = count_knowledge_points(cpu.entropy, masks).points
        row: dict[str, Any] = {"engine": method}
        for noise in (None, "cpu"):

            def run(noise: str | None = noise, method: str = method) -> Any:
                options = dict(layer="features.bn6", method=method, noise_device=noise, **sigma[method])
                return estimate_sigma_maps(on_device, device_images, **options)

            seconds = _best_seconds(device, run, repeats=1)
            maps = run().to("cpu")
            points = count_knowledge_points(maps.entropy, masks).points
            union = int((points | cpu_points).sum())
            row[f"iou_{noise or 'device'}"] = float((points & cpu_points).sum()) / union if union else 1.0
            row[f"max_dsigma_{noise or 'device'}"] = float((maps.sigma - cpu.sigma).abs().max())
            row[f"seconds_{noise or 'device'}"] = seconds
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device: checks the script")
    parser.add_argument("--images", type=int, default=16, help="probe images per case (default 16)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    options = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images_per_case = 2 if options.smoke else options.images
    sigma = (
        {"faithful": dict(samples=8, steps=6), "secant": dict(samples=8, passes=2, steps=6)}
        if options.smoke
        else {"faithful": {}, "secant": {}}
    )
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; torch {torch.__version__}"
    )
    found: dict[str, Any] = {"peaks": peaks(device, 256 if options.smoke else 8192), "cases": []}
    print("peaks (TFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in found["peaks"].items()))
    best_peak = max(found["peaks"]["matmul tf32"], found["peaks"]["conv bf16"])
    print(
        "| case | engine | batch | maps/s | TFLOP/s (share of the peak) | peak GiB | maps/s at batch 4096 | "
        "peak GiB at 4096 | per-image maps/s | share of a KD epoch |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    epoch = {}
    for name, network, layer, side, lam in cases(options.smoke):
        network = network.to(device).eval()
        images = torch.rand(images_per_case, 3, side, side, generator=torch.Generator().manual_seed(side)).to(device)
        flops = {m: flops_per_map(network, images[:2], layer, lam, m, sigma[m]) for m in ("faithful", "secant")}
        if "ResNet" in name and side not in epoch:
            epoch[side] = epoch_seconds(device, side, options.smoke)
        for method in ("faithful", "secant"):
            auto, _ = measure_maps(network, images, layer, lam, method, sigma[method])
            old, _ = measure_maps(network, images, layer, lam, method, {**sigma[method], "max_batch": 4096})
            tflops = flops[method] * auto["maps_per_s"] / 1e12
            row = {
                "case": name,
                "engine": method,
                **auto,
                "tflops": tflops,
                "share_of_peak": tflops / best_peak,
                "maps_per_s_4096": old["maps_per_s"],
                "peak_gib_4096": old["peak_gib"],
            }
            if method == "faithful":
                grid = 16
                count = 1 if side >= 224 or options.smoke else 2
                start = time.perf_counter()
                oracle_sigma_maps(
                    network,
                    images[:count],
                    layer=layer,
                    grid=grid,
                    lam=lam,
                    **({"samples": 8, "steps": 6} if options.smoke else {}),
                )
                _sync(device)
                row["per_image_maps_per_s"] = count / (time.perf_counter() - start)
            share = auto["seconds"] / images_per_case * 16 / epoch[side] if side in epoch else float("nan")
            row["share_of_epoch"] = share
            row["precision"] = precision_figures(network, images, layer, lam, method, sigma[method])
            found["cases"].append(row)
            print(
                f"| {name} | {method} | {auto['batch']} | {auto['maps_per_s']:.2f} | {tflops:.1f} "
                f"({tflops / best_peak:.0%}) | {auto['peak_gib']:.1f} | {old['maps_per_s']:.2f} | "
                f"{old['peak_gib']:.1f} | {row.get('per_image_maps_per_s', float('nan')):.2f} | {share:.1%} |"
            )
    print(
        "\n| case | engine | maps/s float32 / tf32 / bf16 | KP IoU vs float32: tf32 / bf16 (seed floor) | "
        "abs Δ fg_ratio: tf32 / bf16 (seed floor) |\n|---|---|---|---|---|"
    )
    for row in found["cases"]:
        figures = row["precision"]
        speeds = " / ".join(f"{figures[label]['maps_per_s']:.2f}" for label in ("float32", "tf32", "bf16"))
        ious, fgs = (
            " / ".join(f"{figures[label][key]:.3f}" for label in ("tf32", "bf16")) + f" ({figures['floor'][key]:.3f})"
            for key in ("iou", "fg")
        )
        print(f"| {row['case']} | {row['engine']} | {speeds} | {ious} | {fgs} |")
    found["reproducibility"] = reproducibility(device, options.smoke, sigma)
    print(
        "\n| engine | KP IoU vs CPU, device noise | KP IoU vs CPU, noise_device='cpu' | max abs Δσ (device / cpu noise) "
        "| cpu-noise time ratio |"
    )
    print("|---|---|---|---|---|")
    for row in found["reproducibility"]:
        print(
            f"| {row['engine']} | {row['iou_device']:.3f} | {row['iou_cpu']:.3f} | {row['max_dsigma_device']:.2e} / "
            f"{row['max_dsigma_cpu']:.2e} | {row['seconds_cpu'] / row['seconds_device']:.2f} |"
        )
    if options.json:
        options.json.write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    main()
