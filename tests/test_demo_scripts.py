"""The scripts in ``demos/`` that produce README figures, on small runs laid out as the demo lays them out."""

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import Subset

from kd_probe import DistillationModule, ShapesDataModule, UniCAMProbe
from kd_probe.models import VGG
from tests.modules.conftest import tiny_trainer

DEMOS = Path(__file__).resolve().parents[1] / "demos"
LAYERS = ["features.relu2", "features.relu4"]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"demos_{name}", DEMOS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(root: Path, name: str, module: DistillationModule, data: ShapesDataModule, callbacks: list) -> None:
    logger = TensorBoardLogger(root, name=name, version="", default_hp_metric=False)
    trainer = tiny_trainer(root, logger=logger, enable_checkpointing=True, callbacks=callbacks, log_every_n_steps=1)
    trainer.fit(module, datamodule=data)


def test_unicam_features_repeats_the_probes_pooled_scores_and_adds_flattened_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ShapesDataModule(
        num_classes=3, image_size=16, train_size=64, val_size=24, test_size=8, probe_size=4, batch_size=16, seed=3
    )
    torch.manual_seed(0)
    teacher = VGG(3, widths=(8, 16), convs_per_stage=2)
    _run(tmp_path, "teacher", DistillationModule(teacher), data, [])
    data.setup("fit")
    probe = UniCAMProbe(Subset(data.val_set, range(12)), layers=LAYERS, cam_layer=LAYERS[-1])
    student = VGG(3, widths=(4, 8), convs_per_stage=2)
    _run(tmp_path, "distilled", DistillationModule(student, teacher), data, [probe])

    script = _script("unicam_features")
    count, rows = script.scores(tmp_path)
    last = probe.history[-1]
    assert count == 12
    assert [(run, layer, name) for run, layer, name, _, _ in rows] == [
        ("distilled", layer, name) for layer in LAYERS for name in script.SCORES
    ]
    keys = {"FSS": "fss/{}", "FSS (V)": "fss_v/{}", "RS student": "rs/student/{}", "RS teacher": "rs/teacher/{}"}
    for _, layer, name, pooled, flattened in rows:
        if name in keys:  # the probe's own scores (it runs without normalize_rows)
            assert pooled == pytest.approx(last[keys[name].format(layer)], abs=1e-5), (layer, name)
        assert math.isfinite(flattened) and -1 <= flattened <= 1
    assert any(abs(pooled - flattened) > 1e-3 for *_, pooled, flattened in rows)

    monkeypatch.setattr(sys, "argv", ["unicam_features.py", str(tmp_path)])
    script.main()
    out = capsys.readouterr().out
    assert out.startswith("12 validation images;") and len(out.splitlines()) == 2 + len(rows)


def test_unicam_features_says_what_it_expected_of_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="expected the `teacher` run and student runs of a `kd-probe demo`"):
        _script("unicam_features").scores(tmp_path)
