"""The negative control on real runs (issue 29): six tiny runs that differ only in their training seed, three
called "distilled" and three "baseline", get no verdict about distillation; the statements about these runs
may still find that the networks differ, and say so as a statement about the runs."""

import json
import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from kd_probe import DistillationModule, KnowledgePointProbe
from kd_probe.apps.report.write import write_report
from kd_probe.data import ShapesDataModule
from kd_probe.models import VGG
from tests.callbacks.conftest import trainer

CLAIMS = ("**holds", "**does not hold", "**partly", "**mixed")


@pytest.mark.slow
def test_runs_that_differ_only_by_seed_get_no_verdict_about_distillation(tmp_path: Path) -> None:
    experiment = tmp_path / "e"
    for seed in range(6):
        role, pair = ("distilled", "baseline")[seed % 2], seed // 2
        data = ShapesDataModule(
            num_classes=3, image_size=16, train_size=64, val_size=16, test_size=16, probe_size=12, batch_size=16
        )
        torch.manual_seed(seed)  # the only difference between the runs: the same recipe, no teacher
        network = VGG(num_classes=3, widths=(8, 16), convs_per_stage=1)
        probe = KnowledgePointProbe(
            data, layer="features.bn2", epochs=[0, 2, 4], grid=4, samples=8, steps=25, threshold=0.05
        )
        logger = TensorBoardLogger(experiment, name=f"{role}-s{pair}", version="")
        trainer(tmp_path, max_epochs=4, logger=logger, callbacks=[probe]).fit(
            DistillationModule(network), datamodule=data
        )
        record = {"run": f"{role}-s{pair}", "role": role, "seed": pair, "protocol": "hinton", "test_accuracy": 0.5}
        (experiment / f"{role}-s{pair}" / "kd_probe_run.json").write_text(json.dumps(record))
    _, text = write_report([experiment], tmp_path / "out", figures=False, resamples=400)
    lines = text.splitlines()
    about = [lines[i + 1 : i + 4] for i, line in enumerate(lines) if line == "  - about distillation (3 seed pairs):"]
    assert len(about) == 3  # H1, H2, H3
    for view_lines in about:
        for line in view_lines[:2]:
            assert line.startswith(("    - all probe images", "    - effective images")), line
            assert not any(claim in line for claim in CLAIMS), line
    values = re.findall(r"N_fg (\S+) vs (\S+), difference", text)
    assert values and any(float(a) > 0 for pair in values for a in pair)  # the control has knowledge points
