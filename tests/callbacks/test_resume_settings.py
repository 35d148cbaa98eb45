"""Issue 28, class 4: a probe resumed from a checkpoint whose history was probed with other settings refuses in
one sentence naming the setting and both values, for every probe with a history (the knowledge-point probe's
own table is in test_knowledge_point_probe.py)."""

from pathlib import Path
from typing import Any

import pytest
import torch

from kd_probe import AgreementProbe, DistillationModule, UniCAMProbe
from tests.callbacks.conftest import tiny_data, tiny_net, trainer

AGREEMENT = {"teacher_layer": "features.relu2", "student_layer": "features.relu2", "eps": 0.3, "steps": 2}
UNICAM = {"layers": ["features.relu2"], "cam_layer": "features.relu2"}


def _probe_set(count: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.rand(count, 3, 16, 16, generator=generator), torch.arange(count) % 2


def _other_probe_set() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _probe_set()
    return images.flip(0), labels.flip(0)


CASES = [
    (AgreementProbe, AGREEMENT, {"student_layer": "features.relu1"}, "student_layer='features.relu2', this probe has student_layer='features.relu1'"),
    (AgreementProbe, AGREEMENT, {"eps": 0.2}, "eps=[0.3], this probe has eps=[0.2]"),
    (AgreementProbe, AGREEMENT, {"steps": 3}, "steps=2, this probe has steps=3"),
    (AgreementProbe, AGREEMENT, {"seed": 4}, "seed=0, this probe has seed=4"),
    (AgreementProbe, AGREEMENT, {"transforms": ("color",)}, "transforms=['color', 'crop', 'shift'], this probe has transforms=['color']"),
    (AgreementProbe, AGREEMENT, {"normalization": ((0.5,) * 3, (0.25,) * 3)}, "probe_set="),
    (AgreementProbe, AGREEMENT, {"images": "other"}, "probe_set="),
    (UniCAMProbe, UNICAM, {"layers": ["features.relu1"]}, "layers=[['features.relu2', 'features.relu2']], this probe has layers=[['features.relu1', 'features.relu1']]"),
    (UniCAMProbe, UNICAM, {"cam_layer": "features.relu1"}, "cam_layer=['features.relu2', 'features.relu2'], this probe has cam_layer=['features.relu1', 'features.relu1']"),
    (UniCAMProbe, UNICAM, {"objective": "max_row"}, "objective='relevance', this probe has objective='max_row'"),
    (UniCAMProbe, UNICAM, {"features": "flattened"}, "features='pooled', this probe has features='flattened'"),
    (UniCAMProbe, UNICAM, {"teacher": "reference"}, "networks=['teacher', 'student', None], this probe has networks=['reference', 'student', None]"),
    (UniCAMProbe, UNICAM, {"images": "other"}, "probe_set="),
]  # fmt: skip


@pytest.mark.parametrize(("probe_class", "options", "change", "named"), CASES)
def test_resuming_with_changed_settings_is_refused_naming_both_values(
    probe_class: type, options: dict[str, Any], change: dict[str, Any], named: str
) -> None:
    first = probe_class(*_probe_set(), **options)
    first.history.append({"epoch": 0, "global_step": 0, "failed": "kept"})
    changed_options = {**options, **change}
    source = _other_probe_set() if changed_options.pop("images", None) == "other" else _probe_set()
    changed = probe_class(*source, **changed_options)
    with pytest.raises(ValueError) as refused:
        changed.load_state_dict(first.state_dict())
    message = str(refused.value)
    assert message.startswith(f"{probe_class.__name__}: the checkpoint's history was probed with "), message
    assert named in message, message
    assert message.endswith("resume with the same settings, or give this probe another `name` to start a new history.")
    assert changed.history == []
    same = probe_class(*_probe_set(), **options)
    same.load_state_dict(first.state_dict())
    assert same.history == first.history


@pytest.mark.parametrize(("probe_class", "options"), [(AgreementProbe, AGREEMENT), (UniCAMProbe, UNICAM)])
def test_checkpoints_without_settings_still_load(probe_class: type, options: dict[str, Any]) -> None:
    probe = probe_class(*_probe_set(), **options)
    probe.load_state_dict({"history": [{"epoch": 0, "global_step": 0, "failed": "old"}]})
    assert len(probe.history) == 1


def test_resuming_a_fit_with_a_changed_probe_stops_before_training(tmp_path: Path) -> None:
    data = tiny_data()
    first = AgreementProbe(data, **AGREEMENT)
    fit = trainer(tmp_path / "a", max_epochs=1, callbacks=[first], enable_checkpointing=True)
    fit.fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data)
    checkpoint = next((tmp_path / "a").rglob("*.ckpt"))
    changed = AgreementProbe(data, **{**AGREEMENT, "steps": 3})
    again = trainer(tmp_path / "b", max_epochs=2, callbacks=[changed])
    with pytest.raises(ValueError, match="steps=2, this probe has steps=3"):
        again.fit(DistillationModule(tiny_net(), tiny_net()), datamodule=data, ckpt_path=checkpoint)
    assert changed.history == []
