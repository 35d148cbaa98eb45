"""The σ-map engine measured four ways, each a section of one run (``--sections``, default: fidelity early-stop).

**fidelity** — the fast ``method="secant"`` (methods §1.8) and cheaper faithful runs against the paper's faithful
96-sample maps (methods §1.2, ``patience=None``), on a trained VGG of the demo, the same VGG at its initialisation
and a trained ResNet (``benchmarks/_sigma_models.py``), ``--images`` held-out probe images of the built-in shapes.
Per model, every method runs on the same block of images in turn (``--block`` images per round, the order
rotated each round), so a shared machine's drifts hit every method alike; the per-image noise seeding makes the
blocked maps identical to one batch. Per method: wall time per map and the speed ratio to faithful-96 (the mean
of its two seeds' times, measured in the same run), and against the faithful-96 seed-0 maps: the Pearson
correlation of the entropy maps (all units of all images pooled), the IoU of the knowledge-point maps at
b = 0.1/0.2/0.3/0.5 (``count_knowledge_points`` with the probe set's masks and the dataset baseline, boolean
maps pooled over images), ``|Δ fg_ratio|`` at b = 0.2 and the mean ``|Δ selected step|``. The noise floor is
faithful-96 with seed 1 against seed 0 on the same metrics. Goals: a secant preset ≥ 10× faithful-96 with
IoU(0.2) ≥ the noise floor's − 0.01; a faster preset ≥ 20× with IoU(0.2) ≥ 0.88 on the trained VGG.

**early-stop** — faithful-96 with ``patience=k`` against ``patience=None`` (run to step 59/79 as the paper) on
``--stop-images`` images, seeds ``--stop-seeds``, each model: how many images' selected step and map differ,
and the speed gain (``patience=None`` time over ``patience=k`` time, interleaved per seed).

**speed** — the engine against the straightforward per-image oracle
(:func:`benchmarks.sigma_oracle.oracle_sigma_maps`, methods §1.2 written the obvious way: one image at a time,
full forward with a hook, ``torch.optim.SGD`` on σ) and the machine (a 64→64 3×3 convolution forward on
32×32 channels-last inputs, batch 128), interleaved in rounds of ``--block`` images on the trained VGG at
``--layers``. Both produce the same maps from the same per-image noise; the table shows how close they are;
the library's GFLOP/s counts the convolution/linear FLOPs of the forwards to the layer and the
input-gradient backwards it ran (``torch.utils.flop_counter``) over its wall time. Goals (2-core CPU):
library ≥ 2× the oracle's maps/s with identical maps; library ≥ 40 % of the conv throughput.

**precision** — ``precision="bf16"`` (and ``"tf32"`` on a GPU) against ``"float32"`` with the same seed (methods
§4.6), per engine with the library's defaults (faithful-96, secant 3×256, ``patience=3``), on the fidelity section's
models and images, interleaved alike: time per map, speed ratio, agreement next to float32 seed 1's (the floor).

Run: ``python benchmarks/bench_sigma.py [--sections fidelity early-stop speed precision] [--images 16] [--device cuda]``
(writes nothing; about 35 minutes on a 2-core CPU with the defaults — training the networks ≈ 3, fidelity ≈ 25
for 16 images, early stop ≈ 6 —, the speed section ≈ 5 more, precision ≈ 3; longer on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `benchmarks.*`

from benchmarks._sigma_models import MODELS, ProbedModel, probe_images, probed_models, shapes_data, trained_vgg
from benchmarks.sigma_oracle import oracle_sigma_maps
from kd_probe import SigmaMaps, count_knowledge_points, estimate_sigma_maps
from kd_probe.core.sigma import BOOST_STEPS, gaussian_entropy
from kd_probe.functional import forward_until

THRESHOLDS = (0.1, 0.2, 0.3, 0.5)  # b of the knowledge-point IoUs; b = 0.2 is the paper's and the goals'
REFERENCE, FLOOR = "faithful-96", "faithful-96 seed 1"
PRECISION_HEAD = "| model | engine | precision | s/map | speed | IoU b=0.2 | abs Δ fg_ratio | Pearson H | abs Δ step |"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, work: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    seconds, _, result = _clocked(device, work, *args, **kwargs)
    return seconds, result


def _clocked(device: torch.device, work: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """Wall seconds, this process's CPU seconds, and the result of ``work(*args, **kwargs)``."""
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = work(*args, **kwargs)
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, result


# ---------------------------------------------------------------------------------------------- fidelity


@dataclass
class Method:
    """One way of making σ maps: its label, the options of ``estimate_sigma_maps``, and what it measured."""

    label: str
    options: dict[str, Any]
    rounds: list[float] = field(default_factory=list)  # wall seconds of each round
    cpu: float = 0.0  # CPU seconds of this process, all rounds
    parts: list[SigmaMaps] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(self.rounds)

    def maps(self) -> SigmaMaps:
        return SigmaMaps.cat([part.to("cpu") for part in self.parts])


def _methods(args: argparse.Namespace) -> list[Method]:
    methods = [Method(REFERENCE, dict(method="faithful", samples=96, seed=0))]
    methods.append(Method(FLOOR, dict(method="faithful", samples=96, seed=1)))
    methods += [Method(f"faithful-{s}", dict(method="faithful", samples=s)) for s in args.faithful if s != 96]
    for preset in args.presets:  # PASSESxSAMPLES, or PASSESxSAMPLES@SEED for another seed of the noise than 0
        shape, _, seed = preset.lower().partition("@")
        passes, samples = (int(part) for part in shape.split("x"))
        name = f"secant {passes}x{samples}" + (f" seed {seed}" if seed else "")
        options = dict(method="secant", passes=passes, samples=samples, seed=int(seed or 0))
        methods.append(Method(name, options))
    return methods


def _warm_up(probed: ProbedModel, images: torch.Tensor, methods: tuple[Method, ...] | list[Method] = ()) -> None:
    """Pay the one-off costs (allocator, kernel selection) outside the timings."""
    for precision in {None} | {method.options.get("precision") for method in methods}:
        for method in ("faithful", "secant"):
            options: dict[str, Any] = dict(layer=probed.layer, method=method, samples=8, steps=2, precision=precision)
            estimate_sigma_maps(probed.model, images[:1], **options)


def _agreement(reference: SigmaMaps, other: SigmaMaps, masks: torch.Tensor) -> dict[str, float]:
    """Pearson of the entropy maps, knowledge-point IoU per b, |Δ fg_ratio| (b = 0.2), mean |Δ step|."""
    both = reference.effective & other.effective
    pair = torch.stack([reference.entropy[both].flatten(), other.entropy[both].flatten()]).double()
    result = {"pearson": float(torch.corrcoef(pair)[0, 1])}
    for b in THRESHOLDS:
        a = count_knowledge_points(reference.entropy, masks, threshold=b, effective=reference.effective)
        c = count_knowledge_points(other.entropy, masks, threshold=b, effective=other.effective)
        union = int((a.points | c.points).sum())
        result[f"iou{b}"] = int((a.points & c.points).sum()) / union if union else 1.0
        if b == 0.2:
            result["fg"] = abs(a.fg_ratio - c.fg_ratio)
    result["step"] = float((reference.step - other.step).abs().double().mean())
    return result


def _compared(
    probed: ProbedModel, images: torch.Tensor, masks: torch.Tensor, block_size: int, methods: list[Method], **extra: Any
) -> dict[str, dict[str, float]]:
    """Every method on the same blocks of images in turn, the order rotated each round; per method its seconds per
    map, speed ratio and agreement with ``methods[0]`` (the reference; ``methods[1]`` is its other seed), printed."""
    device = images.device
    common = dict(layer=probed.layer, lam=probed.lam, **extra)
    _warm_up(probed, images, methods)
    for round_, first in enumerate(range(0, images.shape[0], block_size)):
        block = images[first : first + block_size]
        indices = list(range(first, first + block.shape[0]))
        shift = round_ % len(methods)
        for method in methods[shift:] + methods[:shift]:  # rotate the order each round
            options = {**common, **method.options}
            elapsed, cpu, maps = _clocked(device, estimate_sigma_maps, probed.model, block, indices=indices, **options)
            method.rounds.append(elapsed)
            method.cpu += cpu
            method.parts.append(maps)
        print(f"  {probed.name}: images 0-{first + block.shape[0] - 1} done", flush=True)

    reference = methods[0].maps()
    reference_rounds = [(a + b) / 2 for a, b in zip(methods[0].rounds, methods[1].rounds, strict=True)]
    reference_cpu = (methods[0].cpu + methods[1].cpu) / 2
    count = images.shape[0]
    rows = {}
    print(
        f"\n{probed.name}: layer {probed.layer}, λ {probed.lam:g}, val accuracy {probed.accuracy:.2f}, "
        f"{count} images; reference {methods[0].label}, its selected step {float(reference.step.double().mean()):.1f} "
        f"on average; ratio = its time (mean with {methods[1].label}) / time, over all rounds (range: the rounds' "
        "own ratios; CPU: the same ratio of this process's CPU time, steadier on a shared machine)"
    )
    head = "".join(f"{'IoU b=' + format(b, 'g'):>10}" for b in THRESHOLDS)
    print(
        f"{'method':<24}{'s/map':>8}{'ratio':>7}{'range':>12}{'CPU':>6}{'Pearson':>9}{head}{'|Δfg|':>7}{'|Δstep|':>8}"
    )
    for method in methods:
        per_round = [r / m for r, m in zip(reference_rounds, method.rounds, strict=True)]
        row = {
            "seconds": method.seconds / count,
            "ratio": sum(reference_rounds) / method.seconds,
            "low": min(per_round),
            "high": max(per_round),
            "cpu": reference_cpu / method.cpu,
        }
        if method is not methods[0]:
            row.update(_agreement(reference, method.maps(), masks))
        rows[method.label] = row
        if method is methods[0]:
            metrics = f"{'(reference)':>12}"
        else:
            ious = "".join(f"{row[f'iou{b}']:>10.3f}" for b in THRESHOLDS)
            metrics = f"{row['pearson']:>9.4f}{ious}{row['fg']:>7.3f}{row['step']:>8.1f}"
        spread = f"{row['low']:.1f}-{row['high']:.1f}"
        print(f"{method.label:<24}{row['seconds']:>8.3f}{row['ratio']:>7.1f}{spread:>12}{row['cpu']:>6.1f}{metrics}")
    return rows


def _fidelity(probed: ProbedModel, images: torch.Tensor, masks: torch.Tensor, args: argparse.Namespace) -> dict:
    rows = _compared(probed, images, masks, args.block, _methods(args), patience=None)  # the paper's recurrence
    floor = rows[FLOOR]["iou0.2"]
    secant = {label: row for label, row in rows.items() if label.startswith("secant")}
    meets = [label for label, row in secant.items() if row["ratio"] >= 10 and row["iou0.2"] >= floor - 0.01]
    print(f"goal 1 (secant ≥ 10×, IoU(0.2) ≥ noise floor {floor:.3f} − 0.01): {', '.join(meets) or 'none'}")
    if probed.name == "trained-vgg":
        fast = [label for label, row in secant.items() if row["ratio"] >= 20 and row["iou0.2"] >= 0.88]
        print(f"goal 2 (secant ≥ 20×, IoU(0.2) ≥ 0.88 on the trained VGG): {', '.join(fast) or 'none'}")
    print(flush=True)
    return rows


def _markdown(results: dict[str, dict[str, dict[str, float]]]) -> None:
    names = list(results)
    print("Fidelity against faithful-96 (markdown): speed ratio × / knowledge-point IoU at b = 0.2 / entropy Pearson")
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for label in results[names[0]]:
        cells = []
        for name in names:
            row = results[name][label]
            cells.append(
                f"{row['ratio']:.1f}× (reference)"
                if label == REFERENCE
                else f"{row['ratio']:.1f}× / {row['iou0.2']:.3f} / {row['pearson']:.4f}"
            )
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(flush=True)


# --------------------------------------------------------------------------------------------- precision


def _precision(probed: ProbedModel, images: torch.Tensor, masks: torch.Tensor, args: argparse.Namespace) -> list[str]:
    """Per engine, library defaults: bf16 (and tf32 on a GPU) against float32 seed 0; the markdown summary's rows."""
    others = ["bf16", "tf32"] if images.device.type == "cuda" else ["bf16"]
    runs = [("float32", 0, ""), ("float32", 1, " seed 1")] + [(other, 0, "") for other in others]
    lines = []
    for engine in ("faithful", "secant"):
        methods = [Method(f"{engine} {p}{tail}", dict(method=engine, precision=p, seed=seed)) for p, seed, tail in runs]
        rows = list(_compared(probed, images, masks, args.block, methods).values())
        for other, row in zip(others, rows[2:], strict=True):
            cells = [f"{row['seconds']:.3f} ({rows[0]['seconds']:.3f})", f"{row['ratio']:.2f}×"]
            cells += [f"{row[key]:.3f} ({rows[1][key]:.3f})" for key in ("iou0.2", "fg", "pearson", "step")]
            lines.append("| " + " | ".join([probed.name, engine, other, *cells]) + " |")
    return lines


# -------------------------------------------------------------------------------------------- early stop


def _early_stop(probed: ProbedModel, images: torch.Tensor, masks: torch.Tensor, args: argparse.Namespace) -> dict:
    device = images.device
    common = dict(layer=probed.layer, lam=probed.lam, method="faithful", samples=96)
    seconds = {k: 0.0 for k in [None, *args.patience]}
    cpu_seconds = dict.fromkeys(seconds, 0.0)
    differ = {k: {"step": 0, "map": 0, "points": 0, "sigma": 0.0} for k in args.patience}
    _warm_up(probed, images)
    for turn, seed in enumerate(args.stop_seeds):
        runs = {}
        order = list(seconds)
        for k in order[turn % len(order) :] + order[: turn % len(order)]:  # rotate the order each seed
            elapsed, cpu, maps = _clocked(
                device, estimate_sigma_maps, probed.model, images, seed=seed, patience=k, **common
            )
            seconds[k] += elapsed
            cpu_seconds[k] += cpu
            runs[k] = maps.to("cpu")
        full = runs[None]
        full_points = count_knowledge_points(full.entropy, masks, effective=full.effective).points
        for k in args.patience:
            early = runs[k]
            points = count_knowledge_points(early.entropy, masks, effective=early.effective).points
            differ[k]["step"] += int((early.step != full.step).sum())
            differ[k]["map"] += int((early.sigma != full.sigma).flatten(1).any(1).sum())
            differ[k]["points"] += int((points != full_points).flatten(1).any(1).sum())
            differ[k]["sigma"] = max(differ[k]["sigma"], float((early.sigma - full.sigma).abs().max()))
        print(f"  {probed.name}: seed {seed} done", flush=True)
    total = images.shape[0] * len(args.stop_seeds)
    print(
        f"\n{probed.name}: faithful-96, patience=k against patience=None, {images.shape[0]} images × seeds "
        f"{args.stop_seeds} = {total} maps; patience=None: {seconds[None] / total:.3f} s/map"
    )
    print(
        f"{'patience':<10}{'step differs':>14}{'map differs':>13}{'points differ':>15}{'max |Δσ|':>10}{'gain':>8}{'CPU':>7}"
    )
    for k in args.patience:
        row = differ[k]
        print(
            f"{k:<10}{row['step']:>9}/{total:<4}{row['map']:>8}/{total:<4}{row['points']:>10}/{total:<4}"
            f"{row['sigma']:>10.1e}{seconds[None] / seconds[k]:>7.2f}×{cpu_seconds[None] / cpu_seconds[k]:>6.2f}×"
        )
    print(flush=True)
    return {
        k: {**differ[k], "gain": seconds[None] / seconds[k], "cpu": cpu_seconds[None] / cpu_seconds[k], "total": total}
        for k in args.patience
    }


# ------------------------------------------------------------------------------------------------- speed


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


def _speed(
    model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, layer: str, args: argparse.Namespace
) -> None:
    device = images.device
    options = dict(layer=layer, grid=args.grid, samples=args.samples, steps=args.steps)
    times = {"oracle": 0.0, "library": 0.0}
    conv_rates, oracle_parts, library_parts = [], [], []
    for first in range(0, images.shape[0], args.block):
        block = images[first : first + args.block]
        elapsed, result = _timed(device, oracle_sigma_maps, model, block, first_index=first, **options)
        times["oracle"] += elapsed
        oracle_parts.append(result)
        indices = list(range(first, first + block.shape[0]))
        elapsed, maps = _timed(
            device, estimate_sigma_maps, model, block, indices=indices, method="faithful", patience=None, **options
        )
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
    maps = SigmaMaps.cat([m.to("cpu") for m in library_parts])
    steps_run = torch.where(maps.boosted, args.steps, args.steps - BOOST_STEPS)
    count = images.shape[0]
    rows = count * args.samples + int(steps_run.sum()) * args.samples  # σ_f samples + optimisation
    flops = rows * _row_flops(model, layer, images)
    conv = sorted(conv_rates)[len(conv_rates) // 2]
    print(f"\nlayer {layer}: {flops / rows / 1e6:.1f} MFLOP per perturbed image (forward + input gradient)")
    print(f"{'':<12}{'maps/s':>10}{'s/map':>10}{'GFLOP/s':>10}")
    for name in ("oracle", "library"):
        print(f"{name:<12}{count / times[name]:>10.3f}{times[name] / count:>10.3f}{flops / times[name] / 1e9:>10.1f}")
    print(f"ratio library/oracle: {times['oracle'] / times['library']:.2f}x   (goal >= 2)")
    print(
        f"conv throughput (64->64 3x3, 32x32, batch 128, median of rounds): {conv:.1f} GFLOP/s; "
        f"library reaches {100 * flops / times['library'] / 1e9 / conv:.0f} %   (goal >= 40 %)"
    )
    entropy, oracle_entropy = maps.entropy, gaussian_entropy(oracle_sigma)
    same_steps = int((maps.step == oracle_steps).sum())
    a = count_knowledge_points(entropy, masks).points
    b = count_knowledge_points(oracle_entropy, masks).points
    same_points = int((a == b).flatten(1).all(1).sum())
    print(
        f"same maps: max |d sigma| = {float((maps.sigma - oracle_sigma).abs().max()):.2e}, "
        f"max |d H| = {float((entropy - oracle_entropy).abs().max()):.2e} nats, selected step equal "
        f"{same_steps}/{count}, knowledge points equal {same_points}/{count}\n",
        flush=True,
    )


# -------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    sections = ("fidelity", "early-stop", "speed", "precision")
    add("--sections", nargs="+", choices=sections, default=["fidelity", "early-stop"])
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--models", nargs="+", choices=MODELS, default=list(MODELS))
    add("--epochs", type=int, default=10, help="training epochs of the trained VGG and the ResNet")
    add("--images", type=int, default=16, help="probe images of the fidelity and speed sections")
    add("--block", type=int, default=4, help="images per interleaved round")
    add("--faithful", nargs="+", type=int, default=[96, 32, 16, 8], help="faithful sample counts")
    add(
        "--presets",
        nargs="+",
        default=["3x256", "3x192", "2x384", "2x256", "3x96", "1x288"],
        help="secant presets PASSESxSAMPLES, or PASSESxSAMPLES@SEED (the noise's seed; default 0)",
    )
    add("--stop-images", type=int, default=4, help="images of the early-stop section")
    add("--stop-seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--patience", nargs="+", type=int, default=[1, 2, 3, 5])
    add("--samples", type=int, default=96, help="speed section: samples per step")
    add("--steps", type=int, default=80, help="speed section: steps")
    add("--grid", type=int, default=16, help="speed section: units per side")
    add("--layers", nargs="+", default=["features.bn6", "features.bn4"], help="speed section: probed VGG layers")
    args = parser.parse_args()

    device = torch.device(args.device)
    count = max(args.images, args.stop_images)
    data = shapes_data(probe_size=count)
    images, masks = probe_images(data, count, device)
    print(
        f"device={device}, threads={torch.get_num_threads()}; built-in shapes 32x32 px, grid 16, steps 80; "
        f"trained networks: {args.epochs} epochs of AdamW on {len(data.train_set)} images",
        flush=True,
    )
    models = probed_models(data, args.models, args.epochs, device) if set(args.sections) - {"speed"} else []
    if "fidelity" in args.sections:
        print(f"\n== fidelity: {args.images} images, rounds of {args.block}\n", flush=True)
        results = {p.name: _fidelity(p, images[: args.images], masks[: args.images], args) for p in models}
        _markdown(results)
    if "precision" in args.sections:
        print(f"\n== precision: {args.images} images, rounds of {args.block}\n", flush=True)
        lines = [line for p in models for line in _precision(p, images[: args.images], masks[: args.images], args)]
        caption = (
            "\nAgainst float32, same seed (markdown); in brackets float32's s/map, float32 seed 1's agreement (floor)"
        )
        print("\n".join([caption, PRECISION_HEAD, "|---" * 9 + "|", *lines]), flush=True)
    if "early-stop" in args.sections:
        print(f"\n== early stop: {args.stop_images} images, seeds {args.stop_seeds}\n", flush=True)
        stops = {p.name: _early_stop(p, images[: args.stop_images], masks[: args.stop_images], args) for p in models}
        for k in args.patience:
            differs = sum(stop[k]["step"] for stop in stops.values())
            total = sum(stop[k]["total"] for stop in stops.values())
            gains = ", ".join(
                f"{name} {stop[k]['gain']:.2f}× (CPU {stop[k]['cpu']:.2f}×)" for name, stop in stops.items()
            )
            print(f"patience={k}: selected step differs in {differs}/{total} maps; speed gain {gains}")
    if "speed" in args.sections:
        trained = [p.model for p in models if p.name == "trained-vgg"]
        model = trained[0] if trained else trained_vgg(data, args.epochs, device)
        print(f"\n== speed: oracle against library, trained VGG, {args.images} images, samples {args.samples}\n")
        for layer in args.layers:
            _speed(model, images[: args.images], masks[: args.images], layer, args)


if __name__ == "__main__":
    main()
