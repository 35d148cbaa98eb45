"""The scalars ``kd-probe report`` reads from event files (kd_probe.io.events), under the tag names of this version
(kd_probe.io.tags) and under those of runs written before the numbered groups: an older run reports as before."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, WeightTrajectoryMonitor
from kd_probe.io.events import last_agreement, path_efficiency, read_scalars
from kd_probe.io.runs import AGREEMENT, load_run
from tests.callbacks.conftest import PROBE, tiny_data, tiny_net, trainer


def test_the_transfer_is_read_at_the_smallest_eps_of_the_sweep_and_named_probes_are_not() -> None:
    scalars = {
        "3_agreement/cam_cosine": [0.2, 0.8],
        "3_agreement/teacher_fooling_rate/eps_8": [0.5, 0.6],
        "3_agreement/teacher_fooling_rate/eps_0.5": [0.0, 0.1],
        "3_agreement/adv_transfer/eps_8": [0.4, 0.45],
        "3_agreement/adv_transfer/eps_0.5": [0.9],
        "3_agreement/teacher/cam_cosine": [0.1],  # a probe with name="teacher"
        "3_agreement/teacher/teacher_fooling_rate/eps_0.1": [0.2],
        "3_agreement/teacher/adv_transfer/eps_0.1": [0.3],
        "6_weights/features/path_efficiency": [0.5],
        "6_weights/head/path_efficiency": [0.9, 1.0],
    }
    assert last_agreement(scalars, "cam_cosine") == 0.8
    assert last_agreement(scalars, "adv_transfer") == 0.9
    assert path_efficiency(scalars) == 0.75
    del scalars["3_agreement/adv_transfer/eps_0.5"]  # no teacher-fooling image at ε = 0.5/255: not logged
    assert math.isnan(last_agreement(scalars, "adv_transfer"))  # NaN, not another ε's transfer
    assert math.isnan(last_agreement(scalars, "cam_win_rate"))


def test_an_older_run_is_read_under_its_own_names() -> None:
    scalars = {
        "kd_probe/agreement/cam_cosine": [0.2, 0.8],
        "kd_probe/agreement/adv_transfer": [0.3],  # the first ε's, logged twice then
        "kd_probe/agreement/adv_transfer/eps_8": [0.7],
        "kd_probe/agreement/adv_transfer/eps_1": [0.3],
        "kd_probe/teacher/agreement/cam_cosine": [0.1],
        "kd_probe/weights/features/path_efficiency": [0.5],
        "kd_probe/weights/head/path_efficiency": [1.0],
        "val/path_efficiency": [0.0],  # not the monitor's
    }
    assert last_agreement(scalars, "cam_cosine") == 0.8
    assert last_agreement(scalars, "adv_transfer") == 0.3
    assert path_efficiency(scalars) == 0.75


def _as_before(tag: str) -> str:
    """``tag`` as kd_probe named it before the numbered groups (the groups the report reads)."""
    for group, old in (("3_agreement/", "kd_probe/agreement/"), ("6_weights/", "kd_probe/weights/")):
        if tag.startswith(group):
            return old + tag.removeprefix(group)
    return tag


def _plain(metrics: dict[str, float]) -> dict[str, float | None]:
    return {key: None if math.isnan(value) else value for key, value in metrics.items()}


def test_a_run_whose_event_file_has_the_older_names_reports_the_same(tmp_path: Path) -> None:
    """A tiny fit's run folder without its agreement file (the report then reads the agreement from the scalars),
    and a copy whose event file holds the same series under the older names, as earlier versions wrote them."""
    data = tiny_data()
    probes = [
        KnowledgePointProbe(data, layer="features.bn2", epochs=[0, 1], **PROBE),
        AgreementProbe(data, teacher_layer="features.relu2", student_layer="features.relu2", teacher=tiny_net()),
        WeightTrajectoryMonitor(),
    ]
    logger = TensorBoardLogger(tmp_path, name="distilled", version="")
    trainer(tmp_path, max_epochs=1, logger=logger, callbacks=probes).fit(
        DistillationModule(tiny_net(), tiny_net()), datamodule=data
    )
    new = Path(logger.log_dir)
    (new / "kd_probe_agreement.pt").unlink()
    older = Path(shutil.copytree(new, tmp_path / "distilled-older"))
    for file in older.glob("events.out.tfevents.*"):
        file.unlink()
    with SummaryWriter(str(older)) as writer:
        for tag, values in read_scalars(new).items():
            for step, value in enumerate(values):
                writer.add_scalar(_as_before(tag), value, step)
            if tag.endswith("/eps_1"):  # the first ε (1/255), logged unsuffixed as well
                for step, value in enumerate(values):
                    writer.add_scalar(_as_before(tag).removesuffix("/eps_1"), value, step)
    tags = read_scalars(older)
    assert "kd_probe/agreement/cam_cosine" in tags and not [tag for tag in tags if tag.startswith("3_agreement/")]
    reported = load_run(new).metrics
    assert math.isfinite(reported["agreement/cam_cosine"]) and math.isfinite(reported["path_efficiency"])
    assert {f"agreement/{suffix}" for suffix, _ in AGREEMENT} <= set(reported)
    assert _plain(load_run(older).metrics) == _plain(reported)
