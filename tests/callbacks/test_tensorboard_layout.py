"""The TensorBoard entries every kd_probe run gets: the Custom Scalars layout and the HParams columns."""

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import custom_scalars

from kd_probe import (
    AgreementProbe,
    DistillationModule,
    KnowledgePointProbe,
    SimilarityProbe,
    UniCAMProbe,
    WeightTrajectoryMonitor,
)
from kd_probe.callbacks._base import hparams_metric_tags
from kd_probe.callbacks._tensorboard import MARKER_FILE, probe_layout
from kd_probe.data import ShapesDataModule
from kd_probe.io.tags import GROUPS
from tests.callbacks.conftest import PROBE, RecordingLogger, loaders, tiny_data, tiny_net, trainer
from tests.tensorboard_server import get_json, tensorboard_server

LAYOUT_TAG = "custom_scalars__config__"
HPARAMS_METRICS = [
    "1_knowledge_points/n_fg",
    "1_knowledge_points/fg_ratio",
    "2_learning_stability/d_mean",
    "2_learning_stability/d_std",
    "2_learning_stability/rho",
]


def _probes(data: ShapesDataModule, teacher: torch.nn.Module) -> list:
    """The five kd_probe callbacks, probing at epochs 0 and 2 (two ε, every transform, a reference model: every
    tag there is)."""
    layers = {"teacher_layer": "features.relu2", "student_layer": "features.relu2"}
    reference = tiny_net()  # an untrained student: what the win rate and the RS reference compare with
    return [
        KnowledgePointProbe(data, layer="features.bn2", epochs=[0, 2], threshold=0.0, log_images=1, **PROBE),
        WeightTrajectoryMonitor(),
        AgreementProbe(
            data,
            **layers,
            teacher=teacher,
            reference=reference,
            eps=[48 / 255, 8 / 255],  # the first fools the teacher on some images, not all
            steps=2,
            every_n_epochs=2,
            log_images=1,
        ),
        UniCAMProbe(
            data,
            layers=["features.relu1", "features.relu2"],
            cam_layer="features.relu2",
            teacher=teacher,
            reference=reference,
            every_n_epochs=2,
            log_images=1,
        ),
        SimilarityProbe(data, teacher=teacher, every_n_epochs=2),
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A distilled and a baseline run with all five probes in one log directory, each fitted, then tested. The
    distilled run's logger keeps Lightning's default ``hp_metric``, the baseline's turns it off (as the demo)."""
    root = tmp_path_factory.mktemp("tensorboard")
    teacher = tiny_net()
    torch.manual_seed(3)
    teacher.features.conv2.reset_parameters()
    result: dict[str, Any] = {"root": root / "logs"}
    for run in ("distilled", "baseline"):
        data = tiny_data()
        module = DistillationModule(tiny_net(), teacher if run == "distilled" else None)
        probes = _probes(data, teacher)
        logger = TensorBoardLogger(root / "logs", name=run, version="", default_hp_metric=run == "distilled")
        fit = trainer(root / run, logger=logger, callbacks=probes)
        fit.fit(module, datamodule=data)
        val_acc = float(fit.callback_metrics["val/acc"])
        (tested,) = fit.test(module, datamodule=data, verbose=False)
        summary = json.loads((Path(logger.log_dir) / "kd_probe_summary.json").read_text())
        result[run] = SimpleNamespace(
            folder=Path(logger.log_dir), val_acc=val_acc, test_acc=tested["test/acc"], summary=summary
        )
    return result


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _tag_count(folder: Path, tag: str) -> int:
    return sum(
        value.tag == tag
        for path in sorted(folder.glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    )


def _charts_matching(layout: dict, tag: str) -> list[str]:
    return [
        f"{category}/{title}"
        for category, charts in layout.items()
        for title, (kind, patterns) in charts.items()
        if kind == "Multiline" and any(re.match(pattern, tag) for pattern in patterns)
    ]


def test_the_layout_charts_every_probe_tag_of_a_fit_exactly_once(runs: dict[str, Any]) -> None:
    layout = probe_layout()
    assert list(layout) == [
        "knowledge points",
        "learning speed and stability",
        "agreement",
        "FSS/RS",
        "representation similarity",
        "weight trajectory",
        "σ maps",
    ]
    charted = _probe_tags(_events(runs["distilled"].folder).Tags()["scalars"])
    for expected in (
        "1_knowledge_points/n_fg",
        "2_learning_stability/rho",
        "3_agreement/teacher_fooling_rate/eps_8",
        "3_agreement/invariance/crop/student",
        "4_unicam/fss/features.relu1",
        "4_unicam/rs/residual/features.relu2",
        "5_similarity/cka/features.relu2",
        "6_weights/features/update_cosine",
        "7_sigma/effective_fraction",
    ):
        assert expected in charted, expected
    for tag in charted:
        assert len(_charts_matching(layout, tag)) == 1, (tag, _charts_matching(layout, tag))
        if not tag.startswith("6_weights/"):  # a probe with name="student-1.b" logs <group>/student-1.b/...
            group, leaf = tag.split("/", 1)
            named = f"{group}/student-1.b/{leaf}"
            assert _charts_matching(layout, named) == _charts_matching(layout, tag), named
    assert _charts_matching(layout, "1_knowledge_points/n_fg") == [
        "knowledge points/N_fg: knowledge points on the foreground per image"
    ]
    assert _charts_matching(layout, "3_agreement/adv_transfer/eps_0.5") == ["agreement/adversarial transfer at each ε"]
    assert not _charts_matching(layout, "3_agreement/adv_transfer")  # always per ε, also with one ε
    assert not _charts_matching(layout, "kd_probe/knowledge_points/n_fg") and not _charts_matching(layout, "val/acc")
    every_chart = {chart for charts in layout.values() for chart in charts}
    assert sum(len(charts) for charts in layout.values()) == len(every_chart)  # no title twice


def _probe_tags(tags: list[str]) -> list[str]:
    return [tag for tag in tags if tag.split("/", 1)[0] in GROUPS]


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """TensorBoard's natural order of tags and groups (tf_backend's compareTagNames): runs of digits compare by
    value and come before letters."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|\D+", text)]


def test_the_scalars_tab_groups_come_in_the_layout_order_without_duplicate_series(runs: dict[str, Any]) -> None:
    """TensorBoard groups the Scalars tab by the first component of the tags, sorted in natural order, and opens
    the first two groups: the probes' groups come first, in the order of the Custom Scalars categories, knowledge
    points first. No two probe tags of a run hold the same series (the first ε's teacher fooling rate was logged
    twice, the HParams metrics once more as .../hparams/... tags); the layout and the tags match both ways."""
    layout = probe_layout()
    patterns = [pattern for charts in layout.values() for _, chart in charts.values() for pattern in chart]
    for run in ("distilled", "baseline"):
        events = _events(runs[run].folder)
        tags = events.Tags()["scalars"]
        groups = sorted({tag.split("/", 1)[0] for tag in tags}, key=_natural_key)
        assert groups == [*GROUPS, "epoch", *(["hp_metric"] if run == "distilled" else []), "test", "train", "val"]
        probe_tags = _probe_tags(tags)
        for tag in probe_tags:  # each group's charts sit in the category of the same rank
            rank = GROUPS.index(tag.split("/", 1)[0])
            assert [c for c, charts in layout.items() for _, chart in charts.values() if re.match(chart[0], tag)] == [
                list(layout)[rank]
            ], tag
        assert [p for p in patterns if not any(re.match(p, tag) for tag in probe_tags)] == [], run
        series: dict[tuple, list[str]] = {}
        for tag in probe_tags:
            points = tuple((event.step, event.value) for event in events.Scalars(tag))
            if {value for _, value in points} - {0.0, 1.0}:  # a rate at 0 or 1 throughout coincides by nature
                series.setdefault(points, []).append(tag)
        assert [same for same in series.values() if len(same) > 1] == [], run
        fooled = [event.value for event in events.Scalars("3_agreement/teacher_fooling_rate/eps_48")]
        assert min(fooled) > 0 and max(fooled) < 1  # the first ε's rate: a duplicate of it would be caught


def test_the_layout_and_hparams_are_written_once_per_run_folder(runs: dict[str, Any]) -> None:
    for run in ("distilled", "baseline"):
        folder = runs[run].folder
        assert _tag_count(folder, LAYOUT_TAG) == 1, run  # four kd_probe callbacks, a fit and a test
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
        assert marker["layout"] == probe_layout()
    # Lightning adds its own HParams to the distilled run (default_hp_metric=True) at fit and at test, after ours
    assert _tag_count(runs["baseline"].folder, hparams_metadata.SESSION_START_INFO_TAG) == 1
    content = _events(runs["baseline"].folder).Tensors(LAYOUT_TAG)[0].tensor_proto.string_val[0]
    assert content == custom_scalars(probe_layout()).value[0].tensor.string_val[0]  # what TensorBoard reads


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_resuming_writes_neither_layout_nor_hparams_again(tmp_path: Path) -> None:
    data = tiny_data()
    logger = TensorBoardLogger(tmp_path, name="run", version=0, default_hp_metric=False)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    monitors = [WeightTrajectoryMonitor(), WeightTrajectoryMonitor(modules=["features.conv1"])]
    trainer(tmp_path, max_epochs=1, logger=logger, callbacks=[*monitors, checkpoints], enable_checkpointing=True).fit(
        DistillationModule(tiny_net(), schedule=None), **loaders(data)
    )
    resumed = [WeightTrajectoryMonitor(), WeightTrajectoryMonitor(modules=["features.conv1"])]
    logger = TensorBoardLogger(tmp_path, name="run", version=0, default_hp_metric=False)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[*resumed, checkpoints], enable_checkpointing=True).fit(
        DistillationModule(tiny_net(), schedule=None), ckpt_path=tmp_path / "ckpt" / "last.ckpt", **loaders(data)
    )
    folder = Path(logger.log_dir)
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # two fits, one folder
    assert _tag_count(folder, LAYOUT_TAG) == 1
    assert _tag_count(folder, hparams_metadata.EXPERIMENT_TAG) == 1


def test_a_failing_layout_write_warns_once_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: SummaryWriter, layout: dict) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(SummaryWriter, "add_custom_scalars", broken)
    data = tiny_data()
    logger = TensorBoardLogger(tmp_path, name="run")
    monitors = [WeightTrajectoryMonitor(), WeightTrajectoryMonitor(modules=["features.conv1"])]
    with pytest.warns(UserWarning, match="TensorBoard layout and HParams") as caught:
        trainer(tmp_path, max_epochs=2, logger=logger, callbacks=monitors).fit(
            DistillationModule(tiny_net()), **loaders(data)
        )
    failures = [w for w in caught if "TensorBoard layout and HParams" in str(w.message)]
    assert len(failures) == 1 and "OSError: disk full" in str(failures[0].message)
    assert not (Path(logger.log_dir) / MARKER_FILE).exists()  # the next fit tries again
    scalars = _events(Path(logger.log_dir)).Tags()["scalars"]
    assert "6_weights/features/path_efficiency" in scalars  # training and the monitors went on


def test_without_a_tensorboard_logger_nothing_is_written(tmp_path: Path) -> None:
    recorder = RecordingLogger()
    trainer(tmp_path, max_epochs=1, logger=recorder, callbacks=[WeightTrajectoryMonitor()]).fit(
        DistillationModule(tiny_net()), **loaders(tiny_data())
    )
    assert "6_weights/features/distance" in recorder.values
    assert not list(tmp_path.rglob(MARKER_FILE))


def test_hparams_columns_and_values_equal_the_summary(runs: dict[str, Any]) -> None:
    for run in ("distilled", "baseline"):
        events = _events(runs[run].folder)
        content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
        metrics = [info.name.tag for info in experiment.metric_infos]
        assert metrics == [*HPARAMS_METRICS, "val/acc", "test/acc"]  # no hp_metric
        start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
        hparams = {
            name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in start.hparams.items()
        }
        assert hparams["kd_probe/teacher"] == ("VGG" if run == "distilled" else "none")
        assert hparams["kd_probe/layer"] == "features.bn2" and hparams["kd_probe/method"] == "faithful"
        assert hparams["temperature"] == 4.0 and hparams["num_classes"] == 3 and hparams["schedule"] == "cosine"
        assert {info.name for info in experiment.hparam_infos} == set(hparams)
        summary = runs[run].summary
        assert summary["n_fg"] > 0 and summary["rho"] > 0  # threshold 0: values worth comparing
        for tag in HPARAMS_METRICS:  # the live tags' last values are the summary's final ones
            value = events.Scalars(tag)[-1].value
            assert value == pytest.approx(summary[tag.rsplit("/", 1)[1]], rel=1e-6), (run, tag)
        assert events.Scalars("val/acc")[-1].value == pytest.approx(runs[run].val_acc, rel=1e-6)
        assert events.Scalars("test/acc")[-1].value == pytest.approx(runs[run].test_acc, rel=1e-6)
        assert not [tag for tag in events.Tags()["scalars"] if "hparams" in tag]  # no second copy of them


def test_named_probes_get_their_own_hparams_metrics() -> None:
    data = tiny_data()
    probes = [
        KnowledgePointProbe(data, layer="features.bn2", **PROBE),
        KnowledgePointProbe(data, layer="features.bn1", module="teacher", name="teacher", **PROBE),
        WeightTrajectoryMonitor(),
    ]
    tags = hparams_metric_tags(SimpleNamespace(callbacks=probes))  # type: ignore[arg-type]
    assert tags == [
        *HPARAMS_METRICS,
        *(tag.replace("/", "/teacher/", 1) for tag in HPARAMS_METRICS),  # 1_knowledge_points/teacher/n_fg, ...
        "val/acc",
        "test/acc",
    ]


@pytest.mark.slow
def test_a_real_tensorboard_serves_the_layout_and_hparams(runs: dict[str, Any]) -> None:
    with tensorboard_server(runs["root"]) as server:
        base = f"{server}/data/plugin"
        layout: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                layout = get_json(f"{base}/custom_scalars/layout")
                runs_seen = get_json(f"{server}/data/runs")
            except OSError:
                runs_seen = []
            if layout and {"distilled", "baseline"} <= set(runs_seen):
                break
            time.sleep(0.5)
        categories = {c["title"]: [chart["title"] for chart in c["chart"]] for c in layout["category"]}
        assert {title: list(charts) for title, charts in probe_layout().items()} == categories  # merged, once
        n_fg = next(
            chart["multiline"]["tag"][0]
            for c in layout["category"]
            for chart in c["chart"]
            if chart["title"].startswith("N_fg")
        )
        for run in ("distilled", "baseline"):  # the chart draws both runs
            query = urllib.parse.urlencode({"run": run, "tag": n_fg})
            scalars = get_json(f"{base}/custom_scalars/scalars?{query}")
            assert scalars["regex_valid"] and list(scalars["tag_to_events"]) == ["1_knowledge_points/n_fg"]
        experiment = get_json(f"{base}/hparams/experiment", {"experimentName": ""})
        assert [m["name"]["tag"] for m in experiment["metricInfos"]] == [*HPARAMS_METRICS, "val/acc", "test/acc"]
        assert {"kd_probe/teacher", "kd_probe/layer", "temperature"} <= {h["name"] for h in experiment["hparamInfos"]}
        groups = get_json(
            f"{base}/hparams/session_groups",
            {"experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "startIndex": 0, "sliceSize": 10},
        )
        sessions = {group["name"]: group for group in groups["sessionGroups"]}
        assert set(sessions) == {"distilled", "baseline"}
        assert sessions["distilled"]["hparams"]["kd_probe/teacher"] == "VGG"
        for run in ("distilled", "baseline"):  # each metric: its tag's last value
            session = {m["name"]["tag"]: m["value"] for m in sessions[run]["metricValues"]}
            for tag in HPARAMS_METRICS:
                expected = runs[run].summary[tag.rsplit("/", 1)[1]]
                assert session[tag] == pytest.approx(expected, rel=1e-6), (run, tag)
            assert session["val/acc"] == pytest.approx(runs[run].val_acc, rel=1e-6)
            assert session["test/acc"] == pytest.approx(runs[run].test_acc, rel=1e-6)
