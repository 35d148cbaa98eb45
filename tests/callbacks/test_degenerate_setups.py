"""Degenerate set-ups get one sentence, not plausible numbers (issue 28, class 7): a Grad-CAM/UniCAM layer with a
1×1 output, a module the forward calls more than once, the ``mean``/``std`` a probe-set file or a data module
brings, and where the files go of a Trainer without a logger folder."""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, UniCAMProbe
from kd_probe.callbacks._checks import check_normalization
from tests.callbacks.conftest import PROBE, RecordingLogger, tiny_data, tiny_net, trainer
from tests.lookalikes import vit_like
from tests.modules.conftest import tiny_trainer
from tests.test_bad_input import SharedBlock

RANK_ZERO = "lightning.pytorch.utilities.rank_zero"
IMAGES = torch.randn(4, 3, 16, 16)
LABELS = torch.tensor([0, 1, 2, 0])
MASKS = torch.zeros(4, 16, 16, dtype=torch.bool)
MASKS[:, 4:12, 4:12] = True


def setup(probe: Any, student: nn.Module | None = None, teacher: nn.Module | None = None) -> None:
    """The probe's ``setup`` for fit, on a tiny Trainer and a DistillationModule (no training)."""
    module = DistillationModule(student if student is not None else tiny_net(), teacher or tiny_net())
    probe.setup(tiny_trainer(Path(".")), module, "fit")


def agreement(**kw: Any) -> AgreementProbe:
    options: dict[str, Any] = dict(teacher_layer="features.relu2", student_layer="features.relu2", transforms=())
    return AgreementProbe(IMAGES, LABELS, **{**options, **kw})


def unicam(**kw: Any) -> UniCAMProbe:
    return UniCAMProbe(IMAGES, LABELS, **{"layers": ["features.relu2"], "cam_layer": "features.relu2", **kw})


def vit(patch_size: int) -> nn.Module:
    torch.manual_seed(0)
    return vit_like(3, image_size=16, patch_size=patch_size, dim=8, depth=1, heads=2)


# ---------------------------------------------------------------------------------------------- a 1×1 CAM layer
ONE_BY_ONE = r"outputs shape {shape}, a 1×1 map .*; expected a spatial map larger than 1×1 .* or transformer tokens"
POOLED, ONE_PATCH = re.escape("(1, 8, 1, 1)"), re.escape("(1, 2, 8)")  # after global pooling; a class token + 1 patch

CAM_CASES: list[tuple[str, Callable[[], None], str]] = [
    ("agreement-teacher", lambda: setup(agreement(teacher_layer="head.pool")), "`teacher_layer`='head.pool'"),
    ("agreement-student", lambda: setup(agreement(student_layer="head.pool")), "`student_layer`='head.pool'"),
    ("unicam-student", lambda: setup(unicam(cam_layer="head.pool")), "`cam_layer`='head.pool'"),
    (
        "unicam-teacher",
        lambda: setup(unicam(cam_layer=("features.relu2", "head.pool"))),
        "`cam_layer`='head.pool'",
    ),
    (
        "agreement-vit-one-patch",
        lambda: setup(agreement(student_layer="blocks.0"), student=vit(16)),
        f"`student_layer`='blocks.0' {ONE_BY_ONE.format(shape=ONE_PATCH)}",
    ),
    (
        "unicam-vit-one-patch",
        lambda: setup(unicam(layers=[("norm", "features.relu2")], cam_layer=("blocks.0", "features.relu2")), vit(16)),
        f"`cam_layer`='blocks.0' {ONE_BY_ONE.format(shape=ONE_PATCH)}",
    ),
]


@pytest.mark.parametrize(("case", "call", "names"), CAM_CASES, ids=[case[0] for case in CAM_CASES])
def test_a_cam_layer_with_a_one_by_one_output_is_refused_at_setup(
    case: str, call: Callable[[], None], names: str
) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert re.search(names, message) and "1×1" in message and "\n" not in message, message
    if "vit" not in case:
        assert re.search(ONE_BY_ONE.format(shape=POOLED), message), message


def test_token_layers_of_several_patches_and_feature_maps_still_set_up() -> None:
    setup(agreement(student_layer="blocks.0"), student=vit(8))  # a class token and 2×2 patches
    setup(unicam(layers=[("norm", "features.relu2")], cam_layer=("blocks.0", "features.relu2")), vit(8))
    setup(unicam(layers=["head.pool"]))  # pooled features are fine for FSS/RS, only the CAM needs a map


# ---------------------------------------------------------------------------------------------- a shared module
class _BlockOnce(SharedBlock):
    """``SharedBlock``'s modules, with ``block`` called once."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


SHARED = r"`{argument}`='{layer}' is called 2 times in one forward of SharedBlock \(a shared module\); {what} would mix"
SHARED_CASES: list[tuple[str, Callable[[], None], str]] = [
    (
        "knowledge-points-layer",
        lambda: setup(KnowledgePointProbe(IMAGES, MASKS, layer="block", **PROBE), SharedBlock()),
        SHARED.format(argument="layer", layer="block", what="its σ map"),
    ),
    (
        "agreement-student-layer",
        lambda: setup(agreement(student_layer="block"), SharedBlock()),
        SHARED.format(argument="student_layer", layer="block", what="its Grad-CAM map"),
    ),
    (
        "agreement-teacher-layer",
        lambda: setup(agreement(teacher_layer="block"), teacher=SharedBlock()),
        SHARED.format(argument="teacher_layer", layer="block", what="its Grad-CAM map"),
    ),
    (
        "unicam-cam-layer",
        lambda: setup(
            unicam(layers=[("stem", "features.relu2")], cam_layer=("block", "features.relu2")), SharedBlock()
        ),
        SHARED.format(argument="cam_layer", layer="block", what="its UniCAM map"),
    ),
    (
        "unicam-feature-layer",
        lambda: setup(
            unicam(layers=[("block", "features.relu2")], cam_layer=("stem", "features.relu2")), SharedBlock()
        ),
        SHARED.format(argument="layers", layer="block", what="its features"),
    ),
    (
        "unicam-reference",
        lambda: setup(
            unicam(layers=[("block", "features.relu2")], cam_layer=("stem", "features.relu2"), reference=SharedBlock()),
            _BlockOnce(),
        ),
        SHARED.format(argument="layers", layer="block", what="its features"),
    ),
]


@pytest.mark.parametrize(("case", "call", "message"), SHARED_CASES, ids=[case[0] for case in SHARED_CASES])
def test_every_probe_refuses_a_module_called_more_than_once_as_the_knowledge_point_probe_does(
    case: str, call: Callable[[], None], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------- mean and std
def probe_file(folder: Path, **stats: Any) -> Path:
    path = folder / "probe_set.pt"
    torch.save({"images": IMAGES, "labels": LABELS, "masks": MASKS, **stats}, path)
    return path


THREE = [0.5, 0.5, 0.5]
STATS: list[tuple[str, dict[str, Any]]] = [  # (case, {"mean": ..., "std": ...}); "refused" when bad
    ("mean-only", {"mean": THREE}),
    ("std-only", {"std": [0.25] * 3}),
    ("mean-two-numbers", {"mean": [0.5, 0.5], "std": [0.25] * 3}),
    ("std-four-numbers", {"mean": THREE, "std": [0.25] * 4}),
    ("std-zero", {"mean": THREE, "std": [0.25, 0.0, 0.25]}),
    ("std-negative", {"mean": THREE, "std": [-0.25] * 3}),
    ("mean-nan", {"mean": [0.5, math.nan, 0.5], "std": [0.25] * 3}),
    ("std-inf", {"mean": THREE, "std": [math.inf] * 3}),
    ("mean-text", {"mean": "0.5", "std": [0.25] * 3}),
    ("mean-empty", {"mean": [], "std": [0.25] * 3}),
    ("mean-two-rows", {"mean": torch.zeros(2, 3), "std": torch.ones(2, 3)}),
]
GOOD_STATS: list[tuple[str, dict[str, Any]]] = [
    ("numbers", {"mean": 0.5, "std": 0.25}),
    ("per-channel", {"mean": THREE, "std": (0.25, 0.2, 0.3)}),
    ("tensors", {"mean": torch.tensor(THREE), "std": torch.full((3,), 0.25)}),
    ("neither", {}),
]


@pytest.mark.parametrize(("case", "stats"), STATS, ids=[case for case, _ in STATS])
def test_a_probe_set_files_bad_mean_or_std_is_refused_naming_the_file_and_key(
    case: str, stats: dict[str, Any], tmp_path: Path
) -> None:
    path = probe_file(tmp_path, **stats)
    before = path.read_bytes()
    messages = set()
    for make in (
        lambda: KnowledgePointProbe(path, layer="features.relu2", **PROBE),
        lambda: AgreementProbe(path, teacher_layer="features.relu2", student_layer="features.relu2"),
        lambda: UniCAMProbe(path, layers=["features.relu2"], cam_layer="features.relu2"),
    ):
        with pytest.raises(ValueError) as info:
            make()
        messages.add(str(info.value))
    assert len(messages) == 1, messages  # every probe reads the file alike
    (message,) = messages
    key = "std" if case.startswith("std") else "mean"
    assert f"`images`={str(path)!r} (a probe-set file) has" in message and f"'{key}'" in message, message
    assert "\n" not in message
    if case.endswith("only"):
        assert "give both" in message
    else:
        assert "as `normalization` takes" in message and "1 or 3" in message
    assert path.read_bytes() == before  # the file is left as it was


@pytest.mark.parametrize(("case", "stats"), [*STATS, *GOOD_STATS], ids=[c for c, _ in [*STATS, *GOOD_STATS]])
def test_a_files_mean_and_std_are_checked_exactly_as_strictly_as_normalization(
    case: str, stats: dict[str, Any], tmp_path: Path
) -> None:
    pair = (stats.get("mean"), stats.get("std"))
    try:
        check_normalization(None if pair == (None, None) else pair, 3)
        argument_refused = False
    except ValueError:
        argument_refused = True
    try:
        probe = AgreementProbe(probe_file(tmp_path, **stats), teacher_layer="x", student_layer="x")
        file_refused = False
    except ValueError:
        file_refused = True
    assert file_refused == argument_refused == (case not in dict(GOOD_STATS))
    if not file_refused and stats:
        assert probe.std.flatten().tolist() == pytest.approx(torch.as_tensor(stats["std"]).flatten().tolist())


class _DataWithStats:
    """A data module as the probes read it: a ``probe_set`` of (image, label, mask) and the inputs' normalisation."""

    def __init__(self, mean: object, std: object) -> None:
        self.probe_set = TensorDataset(IMAGES, LABELS, MASKS)
        self.mean, self.std = mean, std


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        (THREE, None, r"`images` \(a _DataWithStats\) has a 'mean' but no 'std'; give both"),
        ((0.5, 0.5), (0.25,) * 3, r"`images` \(a _DataWithStats\) has 'mean'=\(0.5, 0.5\); expected 1 or 3 finite"),
        (THREE, (0.25, 0.0, 0.25), r"has 'std'=\(0.25, 0.0, 0.25\); expected 1 or 3 finite numbers .*, each > 0"),
    ],
)
def test_a_data_modules_bad_mean_or_std_is_refused(mean: object, std: object, message: str) -> None:
    data = _DataWithStats(mean, std)
    with pytest.raises(ValueError, match=message):
        AgreementProbe(data, teacher_layer="x", student_layer="x")
    assert AgreementProbe(data, teacher_layer="x", student_layer="x", normalization=(0.5, 0.25)).std.item() == 0.25


# ---------------------------------------------------------------------------------------------- logger=False
@pytest.mark.parametrize("logger", [False, "recording"], ids=["logger-false", "logger-without-folder"])
def test_without_a_logger_folder_the_files_go_to_default_root_dir_said_once(
    logger: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tiny_data()
    probes = [
        KnowledgePointProbe(data, layer="features.bn2", epochs=[0, 1], **PROBE),
        AgreementProbe(data, teacher_layer="features.relu2", student_layer="features.relu2", transforms=()),
    ]
    chosen = RecordingLogger() if logger == "recording" else False
    root = tmp_path / "root"
    with caplog.at_level(logging.INFO, logger=RANK_ZERO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = trainer(root, max_epochs=1, callbacks=probes, logger=chosen)
        fit.fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data)
    assert fit.state.finished and fit.current_epoch == 1
    said = [r.getMessage() for r in caplog.records if "no logger with a folder" in r.getMessage()]
    assert said == [
        "kd_probe: the Trainer has no logger with a folder (logger=False, or loggers without a `log_dir`), so the "
        f"probes write their files to its `default_root_dir`, {root}."
    ]
    assert not [w for w in caught if "no logger with a folder" in str(w.message)]
    expected = {"kd_probe_history.pt", "kd_probe_summary.json", "kd_probe_agreement.pt"}
    assert expected <= {path.name for path in root.iterdir()}


def test_files_that_would_land_in_the_current_folder_are_warned_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # Lightning's default_root_dir is the current folder
    data = tiny_data()
    probes = [
        KnowledgePointProbe(data, layer="features.bn2", epochs=[0, 1], **PROBE),
        UniCAMProbe(data, layers=["features.relu2"], cam_layer="features.relu2"),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = pl.Trainer(  # no default_root_dir
            max_epochs=1,
            logger=False,
            callbacks=probes,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        fit.fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data)
    assert fit.state.finished
    warned = [str(w.message) for w in caught if "no logger with a folder" in str(w.message)]
    assert len(warned) == 1 and f"`default_root_dir`, {tmp_path}, the current folder;" in warned[0], warned
    assert "pass `default_root_dir=` or a logger" in warned[0]
    assert {"kd_probe_history.pt", "kd_probe_unicam.pt"} <= {path.name for path in tmp_path.iterdir()}
