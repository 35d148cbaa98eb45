"""This code against an earlier revision on the CPU, side by side in one run: did a change make the CPU slower?

Issue 32 asks that the GPU work leave the CPU no slower. Each round runs the same workloads once with this
checkout's ``kd_probe`` and once with the revision ``--old`` (unpacked with ``git archive`` into a temporary
folder: nothing is written into the repository), each in a fresh process, the order alternated between rounds so
that a shared machine's drift hits both alike. The workloads are the demo's probe work on its student network,
VGG(16,32,64)×2 at its initialisation, and its probe images (the built-in shapes at 32 px, seed 0):

- ``secant-40``: the demo's knowledge-point maps (secant, 2 passes × 64 samples, 40 images);
- ``faithful-8``: the paper's faithful maps (96 samples, 80 steps) of 8 images;
- ``probes-fit``: a one-epoch fit of 2 training batches with the demo's four probes (knowledge points, the weight
  monitor, agreement and UniCAM on 64 held-out images), probing at epochs 0 and 1 — mostly the probes' time.

Printed per workload: seconds (median of the rounds) for old and new, and new / old (total over the rounds;
range: the rounds' own ratios). Below 1 is faster.

Run: ``python benchmarks/bench_cpu_sides.py --old 86ff99e^ [--rounds 3] [--threads 2]`` (about 4 minutes on a
2-core CPU with the defaults; writes nothing outside a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("secant-40", "faithful-8", "probes-fit")


def child(threads: int) -> None:
    """Time the workloads with the ``kd_probe`` first on ``sys.path``; print their seconds as JSON."""
    import logging
    import warnings

    import lightning.pytorch as pl
    import torch
    from torch.utils.data import Subset

    from kd_probe import (
        AgreementProbe,
        DistillationModule,
        KnowledgePointProbe,
        ShapesDataModule,
        UniCAMProbe,
        WeightTrajectoryMonitor,
        estimate_sigma_maps,
    )
    from kd_probe.models import VGG

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    data = ShapesDataModule(num_classes=6, train_size=256, probe_size=40, batch_size=64)
    data.setup("fit")
    images = torch.stack([data.probe_set[i][0] for i in range(40)])
    torch.manual_seed(0)
    student = VGG(num_classes=6, widths=(16, 32, 64))
    seconds = {}
    start = time.perf_counter()
    estimate_sigma_maps(student, images, layer="features.bn6", method="secant", samples=64, passes=2)
    seconds["secant-40"] = time.perf_counter() - start
    start = time.perf_counter()
    estimate_sigma_maps(student, images[:8], layer="features.bn6", samples=96, steps=80)
    seconds["faithful-8"] = time.perf_counter() - start
    torch.manual_seed(1)
    teacher = VGG(num_classes=6, widths=(32, 64, 128)).eval().requires_grad_(False)
    held_out = Subset(data.val_set, range(64))
    probes = [
        KnowledgePointProbe(data, layer="features.bn6", method="secant", samples=64, passes=2),
        WeightTrajectoryMonitor(),
        AgreementProbe(held_out, teacher_layer="features.relu6", student_layer="features.relu6", teacher=teacher),
        UniCAMProbe(
            held_out,
            layers=["features.relu2", "features.relu4", "features.relu6"],
            cam_layer="features.relu6",
            teacher=teacher,
        ),
    ]
    with tempfile.TemporaryDirectory() as folder:
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=0,
            callbacks=probes,
            default_root_dir=folder,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            deterministic=True,
        )
        start = time.perf_counter()
        trainer.fit(DistillationModule(student, teacher), datamodule=data)
        seconds["probes-fit"] = time.perf_counter() - start
    import kd_probe

    print(json.dumps({**seconds, "package": str(Path(kd_probe.__file__).parent)}))


def unpack(revision: str, into: Path) -> Path:
    """The files of ``revision`` under ``into`` (``git archive``: the repository is only read)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as file:
        file.write(archive)
        file.seek(0)
        with tarfile.open(fileobj=file) as tar:
            tar.extractall(into, filter="data")
    return into


def timed(tree: Path, threads: int) -> dict[str, float]:
    """The workloads' seconds in a fresh process importing ``kd_probe`` from ``tree``."""
    environment = {**os.environ, "PYTHONPATH": str(tree), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--threads", str(threads)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the workloads failed with {tree}:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result.pop("package")) != tree / "kd_probe":
        raise SystemExit(f"the workloads imported kd_probe from elsewhere than {tree}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="the earlier revision (anything git understands); required")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.threads)
        return
    if args.old is None:
        parser.error("--old REVISION is required")
    with tempfile.TemporaryDirectory() as folder:
        trees = {"old": unpack(args.old, Path(folder)), "new": ROOT}
        times: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        for round_ in range(args.rounds):
            for side in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                times[side].append(timed(trees[side], args.threads))
    print(f"old = {args.old}, new = this checkout; {args.rounds} rounds, {args.threads} threads")
    print(f"{'workload':<12}{'old s':>8}{'new s':>8}{'new/old':>9}  range")
    for work in WORKLOADS:
        old = [t[work] for t in times["old"]]
        new = [t[work] for t in times["new"]]
        ratios = [n / o for n, o in zip(new, old, strict=True)]
        print(
            f"{work:<12}{statistics.median(old):8.2f}{statistics.median(new):8.2f}{sum(new) / sum(old):9.2f}"
            f"  {min(ratios):.2f}–{max(ratios):.2f}"
        )


if __name__ == "__main__":
    main()
