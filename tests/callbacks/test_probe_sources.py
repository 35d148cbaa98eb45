"""Probe sets a YAML config can name: ``images="datamodule"`` (read at setup) and the path of a saved file."""

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, UniCAMProbe
from kd_probe.callbacks._probe_sources import ProbeFile, open_probe_source
from tests.callbacks.conftest import PROBE, tiny_data, tiny_net, trainer


def probe_file(folder: Path, **parts: object) -> Path:
    data = tiny_data()
    images, labels, masks = (torch.stack([torch.as_tensor(item[i]) for item in data.probe_set]) for i in range(3))
    record = {"images": images, "labels": labels, "masks": masks, "mean": data.mean, "std": data.std, **parts}
    path = folder / "probe_set.pt"
    torch.save({key: value for key, value in record.items() if value is not None}, path)
    return path


def test_a_file_is_read_as_its_tensors_and_normalisation(tmp_path: Path) -> None:
    path = probe_file(tmp_path)
    source = open_probe_source(str(path))
    assert isinstance(source, ProbeFile) and source.images.shape == (6, 3, 16, 16) and source.mean == (0.5, 0.5, 0.5)
    probe = AgreementProbe(path, teacher_layer="features.relu2", student_layer="features.relu2")
    assert torch.equal(probe.images, source.images) and torch.equal(probe.labels, source.labels)
    assert probe.std.flatten().tolist() == [0.25, 0.25, 0.25]  # the file's std, as a data module's would be
    no_stats = probe_file(tmp_path, mean=None, std=None)
    assert AgreementProbe(no_stats, teacher_layer="x", student_layer="x").std.flatten().tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ({"mask": 1}, r"holds unknown keys \['mask'\]; expected some of \['images', 'labels', 'masks', 'mean', 'std'\]"),
        ({"images": None}, r"must hold a dict with an 'images' tensor .*, got a dict with keys \['labels', 'masks'"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_a_probe_set_is_refused(tmp_path: Path, contents: dict, message: str) -> None:
    path = probe_file(tmp_path, **contents)
    with pytest.raises(ValueError, match=message):
        KnowledgePointProbe(str(path), layer="features.bn2")


def test_a_missing_file_and_arguments_given_twice_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`images`='nowhere.pt' is neither 'datamodule' .* nor an existing file"):
        KnowledgePointProbe("nowhere.pt", layer="features.bn2")
    path = probe_file(tmp_path)
    with pytest.raises(ValueError, match=r"`masks` must be None when `images` is a file .*: store them in the file"):
        KnowledgePointProbe(path, torch.zeros(6, 16, 16), layer="features.bn2")
    with pytest.raises(ValueError, match=r"`labels` must be None when `images`='datamodule'"):
        AgreementProbe("datamodule", torch.zeros(6), teacher_layer="x", student_layer="x")


def test_datamodule_is_read_at_setup_from_the_trainers_data_module(tmp_path: Path) -> None:
    probe = UniCAMProbe("datamodule", layers=["features.relu2"], cam_layer="features.relu2")
    assert not hasattr(probe, "images")  # nothing to read before the Trainer knows its data module
    data = tiny_data()
    trainer(tmp_path, max_epochs=1, callbacks=[probe]).fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data)
    assert probe.images.shape[0] == len(data.probe_set) and probe.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_datamodule_without_a_trainer_data_module_is_refused_at_setup(tmp_path: Path) -> None:
    data = tiny_data()
    probe = KnowledgePointProbe("datamodule", layer="features.bn2", **PROBE)
    with pytest.raises(ValueError, match=r"KnowledgePointProbe: `images`='datamodule' .* but the Trainer has no data"):
        trainer(tmp_path, callbacks=[probe]).fit(
            DistillationModule(tiny_net()), train_dataloaders=DataLoader(data.train_set, batch_size=16)
        )
