"""Cost of each probe on a ResNet-18-style network next to one training epoch of it, in one run.

The network is ``tests/lookalikes.resnet18_like``: torchvision's ResNet-18 layout and names, ``ReLU(inplace=True)``
and in-place residual adds (width 64 = the real one, 11.2M parameters). Images are the built-in shapes
(``ShapesDataModule``, 6 classes) at ``--image-size`` (64 px); the probes get ``--images`` (8) held-out images.

- **Training epochs** (the denominators), ``--train-images`` (512) images at batch 32, side by side in each of
  ``--epochs`` rounds (median): *distillation*, the student distilled from a second ResNet-18-style teacher by
  ``DistillationModule`` (SGD, momentum 0.9, lr 0.05, cosine; the teacher's forward included), timed from
  ``on_train_epoch_start`` to ``on_train_epoch_end`` in the Trainer the probes are attached to (so with the
  ``KnowledgePointProbe``'s per-step path length, one copy of ``layer4.1.conv2``'s weight); and right after
  it *plain*, one epoch of the same network alone on the same batches (a plain PyTorch loop: forward,
  cross-entropy, backward, SGD step, same settings) — "one training epoch" of the table.
- **Callbacks as shipped**, attached to the distillation Trainer and timed around each ``probe`` call:
  ``KnowledgePointProbe`` (σ maps at ``--sigma-layer``, the faithful defaults of ``estimate_sigma_maps``:
  grid 16, 96 samples, but ``--sigma-steps`` steps instead of 80, probing once, at epoch 0; a stopwatch on every
  σ step gives the per-step cost, and the 80-step probe is extrapolated as ``fixed + n × per step`` with
  ``n = 60`` when every image reaches the target entropy by step 59 and ``n = 80`` when none does; checked on
  the 2-core CPU: the 10-step figure gave 168 s for ``n = 60``, a measured 80-step probe (``--sigma-steps 80``,
  all 8 images stopped at 60, a 3.5-minute run) took 175 s),
  ``AgreementProbe`` (Grad-CAM of teacher and student, I-FGSM transfer with 5 steps, invariance to 3 transforms)
  and ``UniCAMProbe`` (FSS/RS at ``layer3`` and ``layer4``, UniCAM maps both ways at ``--cam-layer``), each at
  epoch 0 (first call: the teacher side is computed and cached) and after every epoch (cached), and
  ``WeightTrajectoryMonitor()`` (every top-level child, every step: its work per epoch, subtracted from the
  epoch it ran in).
- **Core functions** on the trained student, interleaved in ``--repeats`` rounds (median): ``grad_cam``,
  ``ifgsm`` (5 steps) and one ``UniCAM`` call (teacher features given).
- **In-place-safe capture**: the hooks clone a captured layer output so that a later in-place op cannot
  overwrite it. At ``--cam-layer`` and at ``bn1`` (the largest output, 64×32×32 per image at 64 px), side by
  side in the same rounds: ``grad_cam`` as shipped; ``grad_cam`` with the clone taken out of the hook (what it
  did before, reading the post-ReLU value on this network); a plain forward + backward of the same batch to the
  layer's output through a hook that keeps the output (no library code).

Run from any folder (nothing is written there; the probes' files go to a temporary folder):
``python benchmarks/bench_real_models.py [--sigma-steps 10] [--epochs 3] [--image-size 64] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _demo_setup import quiet_trainer, timed
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `tests.lookalikes`

import kd_probe.callbacks.knowledge_points as knowledge_points_module
import kd_probe.core.agreement as agreement_module
from kd_probe import (
    AgreementProbe,
    DistillationModule,
    KnowledgePointProbe,
    ShapesDataModule,
    UniCAM,
    UniCAMProbe,
    WeightTrajectoryMonitor,
)
from kd_probe.functional import grad_cam, ifgsm, unpack_batch
from tests.lookalikes import resnet18_like

NUM_CLASSES = 6
FULL_SIGMA_STEPS = 80  # estimate_sigma_maps' default
BOOST_STEPS = 20  # images that reach the target entropy stop 20 steps early


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _EpochStopwatch(pl.Callback):
    """Seconds of each training epoch, from ``on_train_epoch_start`` to ``on_train_epoch_end`` (put it first in
    the callbacks so that it stops before any probe runs at the end of the epoch)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _sync(pl_module.device)
        self.seconds.append(time.perf_counter() - self._start)


class _PlainEpochs(pl.Callback):
    """After each distillation epoch, one epoch of ``network`` alone on the same training batches: a plain PyTorch
    loop (forward, cross-entropy, backward, SGD step with the library's default settings), timed."""

    def __init__(self, network: nn.Module, device: torch.device) -> None:
        self.network, self.device = network.to(device), device
        self.optimizer = torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self.seconds: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.network.train()
        _sync(self.device)
        start = time.perf_counter()
        for batch in trainer.train_dataloader:
            inputs, labels = unpack_batch(batch)
            loss = F.cross_entropy(self.network(inputs.to(self.device)), labels.to(self.device))
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        _sync(self.device)
        self.seconds.append(time.perf_counter() - start)


class _TimedMonitor(WeightTrajectoryMonitor):
    """``WeightTrajectoryMonitor`` with a stopwatch on its per-step and per-epoch work."""

    def __init__(self) -> None:
        super().__init__()
        self.in_epoch: list[float] = [0.0]  # per-step work inside each epoch (subtracted from the epoch)
        self.at_epoch_end: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args)
        self.in_epoch[-1] += time.perf_counter() - start

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        self.at_epoch_end.append(time.perf_counter() - start)
        self.in_epoch.append(0.0)


@contextmanager
def _sigma_step_clock() -> Iterator[list[dict[str, Any]]]:
    """Record, for every ``estimate_sigma_maps`` call made by ``KnowledgePointProbe``, its start, the time of
    every σ step (through its ``progress`` callback, the probe's own still called) and its end."""
    calls: list[dict[str, Any]] = []
    original = knowledge_points_module.estimate_sigma_maps

    def clocked(model: nn.Module, images: Tensor, **options: Any) -> Any:
        call: dict[str, Any] = {"images": images.shape[0], "steps": options.get("steps"), "ticks": []}
        inner = options.pop("progress", None)

        def progress(done: int, total: int) -> None:
            call["ticks"].append(time.perf_counter())
            if inner is not None:
                inner(done, total)

        call["start"] = time.perf_counter()
        maps = original(model, images, progress=progress, **options)
        call["end"] = time.perf_counter()
        calls.append(call)
        return maps

    knowledge_points_module.estimate_sigma_maps = clocked
    try:
        yield calls
    finally:
        knowledge_points_module.estimate_sigma_maps = original


@contextmanager
def _capture_without_clone() -> Iterator[None]:
    """``grad_cam`` with the capture before the in-place fix: the hook keeps the output and returns nothing."""
    original = agreement_module.capture_outputs

    @contextmanager
    def plain(model: nn.Module, names: list[str], **_: Any) -> Iterator[dict[str, Tensor]]:
        outputs: dict[str, Tensor] = {}
        handles = [
            model.get_submodule(name).register_forward_hook(
                lambda _m, _i, output, name=name: outputs.__setitem__(name, output)
            )
            for name in names
        ]
        try:
            yield outputs
        finally:
            for handle in handles:
                handle.remove()

    agreement_module.capture_outputs = plain
    try:
        yield
    finally:
        agreement_module.capture_outputs = original


def _plain_forward_backward(model: nn.Module, images: Tensor, labels: Tensor, layer: str) -> Tensor:
    """Eval forward of the batch and the gradient of the true-class logits to the layer's output (no library)."""
    kept: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, output: kept.append(output))
    was_training = model.training
    model.eval()
    try:
        logits = model(images.detach().clone().requires_grad_(True))
        (gradient,) = torch.autograd.grad(logits.gather(1, labels.view(-1, 1)).sum(), kept[0])
    finally:
        handle.remove()
        model.train(was_training)
    return gradient


def _median_seconds(device: torch.device, work: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each piece of work, run in interleaved rounds after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in work}
    for index in range(rounds + 1):
        for name, run in work.items():
            _sync(device)
            start = time.perf_counter()
            run()
            _sync(device)
            if index:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _network(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return resnet18_like(NUM_CLASSES, width=width)


def _fit(
    module: pl.LightningModule, data: ShapesDataModule, args: argparse.Namespace, root: str, callbacks: list
) -> None:
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    trainer = quiet_trainer(
        max_epochs=args.epochs,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accelerator=accelerator,
        devices=1,
        default_root_dir=root,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64: the real network)")
    parser.add_argument("--images", type=int, default=8, help="probe images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=512, help="images in one training epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each kind (the median is used)")
    parser.add_argument("--sigma-steps", type=int, default=10, help="σ steps run (80 is extrapolated)")
    parser.add_argument("--sigma-layer", default="layer4.1.bn2")
    parser.add_argument("--cam-layer", default="layer4.1.bn2")
    parser.add_argument("--repeats", type=int, default=20, help="rounds of the core-function timings")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    started = time.perf_counter()
    data = ShapesDataModule(
        num_classes=NUM_CLASSES,
        image_size=args.image_size,
        train_size=args.train_images,
        val_size=args.batch_size,
        test_size=0,
        probe_size=args.images,
        background_bias=0.2,
        batch_size=args.batch_size,
    )
    data.setup("fit")

    with tempfile.TemporaryDirectory() as root:  # the probes' history files; nothing lands in the cwd
        student, teacher = _network(0, args.width), _network(1, args.width)
        module = DistillationModule(student, teacher)
        knowledge = timed(KnowledgePointProbe)(data, layer=args.sigma_layer, epochs=[0], steps=args.sigma_steps)
        agreement = timed(AgreementProbe)(data, teacher_layer=args.cam_layer, student_layer=args.cam_layer)
        unicam = timed(UniCAMProbe)(data, layers=["layer3", "layer4"], cam_layer=args.cam_layer)
        monitor = _TimedMonitor()
        distill_clock, plain_clock = _EpochStopwatch(), _PlainEpochs(_network(0, args.width), device)
        with _sigma_step_clock() as sigma_calls:
            _fit(module, data, args, root, [distill_clock, plain_clock, knowledge, agreement, unicam, monitor])
        failed = [
            f"{type(probe).__name__}: {entry['failed']}"
            for probe in (knowledge, agreement, unicam)
            for entry in probe.history
            if entry.get("failed")
        ]
        if failed:
            raise RuntimeError(f"probes failed, their timings mean nothing: {failed}")

    # core functions and the capture's cost, on the trained student (left as it was by every call)
    student, teacher = student.to(device), teacher.to(device)
    probe_set = data.probe_set
    images = torch.stack([probe_set[i][0] for i in range(args.images)]).to(device)
    labels = torch.tensor([int(probe_set[i][1]) for i in range(args.images)], device=device)
    features_teacher = UniCAM(student, teacher, layer=args.cam_layer).features_y(images)
    eps = (1 / 255) / torch.tensor(data.std, device=device).view(1, -1, 1, 1)  # AgreementProbe's ε
    work: dict[str, Callable[[], Any]] = {
        "grad_cam": lambda: grad_cam(student, images, labels, layer=args.cam_layer),
        "ifgsm": lambda: ifgsm(student, images, labels, eps=eps, steps=5),
        "unicam": lambda: UniCAM(student, teacher, layer=args.cam_layer)(images, labels, features_y=features_teacher),
    }
    for layer in dict.fromkeys([args.cam_layer, "bn1"]):
        work[f"shipped {layer}"] = lambda layer=layer: grad_cam(student, images, labels, layer=layer)

        def unclone(layer: str = layer) -> Tensor:
            with _capture_without_clone():
                return grad_cam(student, images, labels, layer=layer)

        work[f"no clone {layer}"] = unclone
        work[f"plain {layer}"] = lambda layer=layer: _plain_forward_backward(student, images, labels, layer)
    core = _median_seconds(device, work, args.repeats)

    # the figures
    monitor_in_epoch = monitor.in_epoch[: len(distill_clock.seconds)]
    plain_epoch = statistics.median(plain_clock.seconds)
    distill_epoch = statistics.median(e - m for e, m in zip(distill_clock.seconds, monitor_in_epoch, strict=True))
    sigma = next(c for c in reversed(sigma_calls) if c["steps"] == args.sigma_steps and c["images"] == args.images)
    per_step = statistics.median(b - a for a, b in zip(sigma["ticks"], sigma["ticks"][1:], strict=False))
    probe_seconds = knowledge.seconds[0]
    # clean features, σ_f, counting and the history file: the probe less its steps (the first one taken as typical)
    fixed = probe_seconds - (sigma["ticks"][-1] - sigma["ticks"][0]) - per_step
    parameters = sum(p.numel() for p in student.parameters())
    rows: list[tuple[str, float]] = [
        ("training epoch, plain (the network alone)", plain_epoch),
        ("training epoch, distillation (+ teacher forward)", distill_epoch),
        (f"KnowledgePointProbe, σ {args.sigma_steps} steps (measured)", probe_seconds),
        ("  of which one σ step", per_step),
        ("  of which fixed (σ_f, clean features, counting)", fixed),
        (
            f"KnowledgePointProbe, σ 80 steps, every image stops at {FULL_SIGMA_STEPS - BOOST_STEPS} (extrapolated)",
            fixed + (FULL_SIGMA_STEPS - BOOST_STEPS) * per_step,
        ),
        ("KnowledgePointProbe, σ 80 steps, no image stops early (extrapolated)", fixed + FULL_SIGMA_STEPS * per_step),
        ("AgreementProbe, first (teacher side computed)", agreement.seconds[0]),
        ("AgreementProbe, teacher side cached", statistics.median(agreement.seconds[1:])),
        ("UniCAMProbe, first (teacher side computed)", unicam.seconds[0]),
        ("UniCAMProbe, teacher side cached", statistics.median(unicam.seconds[1:])),
        (
            "WeightTrajectoryMonitor, per epoch (every step)",
            statistics.median(s + e for s, e in zip(monitor_in_epoch, monitor.at_epoch_end, strict=True)),
        ),
        (f"grad_cam at {args.cam_layer}", core["grad_cam"]),
        ("ifgsm, 5 steps", core["ifgsm"]),
        (f"UniCAM at {args.cam_layer}, one call (teacher features given)", core["unicam"]),
    ]
    print(
        f"threads={torch.get_num_threads()}, device {device.type}; ResNet-18-style network (width {args.width}, "
        f"{parameters / 1e6:.1f}M parameters, in-place ReLUs) at {args.image_size} px; probe set {args.images} images"
    )
    print(
        f"one epoch = {args.train_images} built-in images, batch {args.batch_size}, SGD (momentum 0.9), median of "
        f"{args.epochs} rounds; / epoch: the network alone (cross-entropy), / KD epoch: distilled from a teacher of the "
        f"same size\nprobes: σ at {args.sigma_layer} (grid 16, 96 samples), CAMs at {args.cam_layer}\n"
    )
    print(f"{'':<76}{'seconds':>9}{'/ epoch':>10}{'/ KD epoch':>12}")
    for name, seconds in rows:
        print(f"{name:<76}{seconds:>9.3f}{seconds / plain_epoch:>10.4f}{seconds / distill_epoch:>12.4f}")
    if args.sigma_steps > BOOST_STEPS:
        boosted = int(knowledge.history[0]["boosted"].sum())
        print(
            f"σ: {boosted} of {args.images} images had not reached the target entropy by step "
            f"{args.sigma_steps - BOOST_STEPS - 1} and ran all {args.sigma_steps} steps; the others stopped at "
            f"{args.sigma_steps - BOOST_STEPS}"
        )
    print(f"\nin-place-safe capture (grad_cam, {args.images} images, median of {args.repeats} interleaved rounds):")
    print(f"{'layer':<16}{'shipped':>10}{'no clone':>10}{'plain':>10}{'shipped/no clone':>18}{'shipped/plain':>15}")
    for layer in dict.fromkeys([args.cam_layer, "bn1"]):
        shipped, bare, plain = core[f"shipped {layer}"], core[f"no clone {layer}"], core[f"plain {layer}"]
        print(f"{layer:<16}{shipped:>10.4f}{bare:>10.4f}{plain:>10.4f}{shipped / bare:>18.3f}{shipped / plain:>15.3f}")
    print(f"\n(total run time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
