"""Pooled or flattened features: how much the choice moves UniCAM's scores, on a finished demo's students.

Loads the last checkpoints of a default image demo (``kd-probe demo``: the ``teacher`` run and the student
runs), takes the first validation images, as the demo's UniCAM probe does (64), and prints, for every layer the probe
scores and for both ``features="pooled"`` (the default) and ``features="flattened"`` (the [UC] authors' choice
for intermediate layers): the feature similarity FSS (bias-corrected, and the V-statistic without and with
``normalize_rows``, each image's feature vector scaled to unit norm as the authors' scripts do) and the relevance
RS of student and teacher to the labels (methods §3; the same functions as ``UniCAMProbe``). The pooled column
repeats the report's UniCAM table, which checks that the right images and weights are loaded.

Run: ``python demos/unicam_features.py runs/demo`` after ``kd-probe demo`` (seconds; it reads, never writes).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kd_probe import ShapesDataModule
from kd_probe.core.distance_correlation import distance_correlation, distance_matrix
from kd_probe.core.unicam import FEATURES, layer_features
from kd_probe.models import VGG

SCORES = ("FSS", "FSS (V)", "FSS (V) unit rows", "RS student", "RS teacher")


def load(run: Path) -> tuple[VGG, dict[str, Any]]:
    """The network of a demo run (a ``VGG`` with 2 convolutions per stage, its widths read from the weights'
    shapes) from its last checkpoint, and the options of the data module it was trained with."""
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
    if not checkpoints:
        raise SystemExit(f"{run}: no checkpoint in {run / 'checkpoints'} (is this a `kd-probe demo` image run?)")
    saved = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)
    weights = {k.removeprefix("student."): v for k, v in saved["state_dict"].items() if k.startswith("student.")}
    convs = sorted((k for k in weights if k.startswith("features.conv") and k.endswith(".weight")), key=_number)
    widths = tuple(int(weights[k].shape[0]) for k in convs[1::2])
    model = VGG(int(weights["head.fc.weight"].shape[0]), widths=widths, convs_per_stage=2)
    model.load_state_dict(weights)
    return model.eval(), saved["datamodule_hyper_parameters"]


def _number(key: str) -> int:
    return int(key.split(".")[1].removeprefix("conv"))


def scores(demo_dir: Path) -> tuple[int, list[tuple[str, str, str, float, float]]]:
    """The number of probe images, and ``(run, layer, score, pooled, flattened)`` for every student run of
    ``demo_dir`` (those with a UniCAM probe file), layer pair of its probe and score."""
    students = sorted(p for p in demo_dir.iterdir() if (p / "kd_probe_unicam.pt").is_file())
    if not (demo_dir / "teacher").is_dir() or not students:
        raise SystemExit(f"{demo_dir}: expected the `teacher` run and student runs of a `kd-probe demo`.")
    teacher, options = load(demo_dir / "teacher")
    data = ShapesDataModule(**options)
    data.setup("validate")  # the validation split alone (the same images: each split has its own stream)
    rows = []
    for run in students:
        saved = torch.load(run / "kd_probe_unicam.pt", weights_only=False)
        count = saved["distances"]["labels"].shape[0]  # the probe's first validation images
        images = torch.stack([data.val_set[i][0] for i in range(count)])
        onehot = F.one_hot(torch.tensor([int(data.val_set[i][1]) for i in range(count)])).double()
        if not torch.allclose(saved["distances"]["labels"], distance_matrix(onehot)):
            raise SystemExit(f"{run}: its probe images are not the first validation images of its data.")
        student, _ = load(run)
        for s_layer, t_layer in saved["layers"]:
            values: dict[str, list[float]] = {name: [] for name in SCORES}
            for features in FEATURES:
                f_s = layer_features(student, s_layer, images, features=features).double()
                f_t = layer_features(teacher, t_layer, images, features=features).double()
                values["FSS"].append(float(distance_correlation(f_t, f_s)))
                values["FSS (V)"].append(float(distance_correlation(f_t, f_s, bias_corrected=False)))
                unit = distance_correlation(f_t, f_s, bias_corrected=False, normalize_rows=True)
                values["FSS (V) unit rows"].append(float(unit))
                values["RS student"].append(float(distance_correlation(f_s, onehot)))
                values["RS teacher"].append(float(distance_correlation(f_t, onehot)))
            rows += [(run.name, s_layer, name, pooled, flat) for name, (pooled, flat) in values.items()]
    return count, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", type=Path, help="the demo's experiment folder, e.g. runs/demo")
    args = parser.parse_args()
    count, rows = scores(args.demo_dir)
    print(f"{count} validation images; FSS = R*(teacher, student), RS = R*(features, labels)")
    print(f"{'run':<12} {'layer':<16} {'score':<18} {'pooled':>8} {'flattened':>10}")
    for run, layer, name, pooled, flattened in rows:
        print(f"{run:<12} {layer:<16} {name:<18} {pooled:8.3f} {flattened:10.3f}")


if __name__ == "__main__":
    main()
