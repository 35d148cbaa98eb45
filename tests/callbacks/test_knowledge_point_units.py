"""KnowledgePointProbe on token sequences and point clouds ([KP-J]): history, tags, media, errors."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from kd_probe import DistillationModule, KnowledgePointProbe, Points, Tokens
from tests.callbacks.conftest import trainer
from tests.core.test_units import HalfBlindTokens, RadiusBlindPoints, _clouds, _tokens

PROBE = dict(samples=4, steps=25, method="faithful")


def _token_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens = _tokens(count=6, pad_from=[8, 5, 3, 6, 8, 7])
    foreground = torch.zeros(6, 8, dtype=torch.bool)
    foreground[:, 1] = True
    return tokens, torch.arange(6) % 2, foreground


def _point_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    clouds = _clouds(count=6)
    foreground = torch.zeros(6, 10, dtype=torch.bool)
    foreground[:, :6] = True
    return clouds, torch.arange(6) % 3, foreground


def _fit(tmp_path: Path, model: torch.nn.Module, data: tuple, probe: KnowledgePointProbe) -> TensorBoardLogger:
    loader = DataLoader(TensorDataset(*data), batch_size=3)
    logger = TensorBoardLogger(tmp_path, name="run")
    trainer(tmp_path, callbacks=[probe], logger=logger, max_epochs=2).fit(
        DistillationModule(model), train_dataloaders=loader
    )
    return logger


def test_a_token_probe_records_per_token_maps_without_padding_units(tmp_path: Path) -> None:
    tokens, labels, foreground = _token_set()
    probe = KnowledgePointProbe(tokens, foreground, layer="keep", units=Tokens("embedding"), epochs=[0, 2], **PROBE)
    logger = _fit(tmp_path, HalfBlindTokens(), (tokens, labels, foreground), probe)
    assert [entry["epoch"] for entry in probe.history] == [0, 2]
    padding = tokens == 0
    for entry in probe.history:
        assert entry["failed"] is None
        assert entry["entropy"].shape == (6, 8)
        assert entry["entropy"][padding].isnan().all() and not entry["entropy"][~padding].isnan().any()
        assert not (entry["points"] & padding).any()
        assert not entry["points"][:, 4:].any()  # the model never sees the second half
    history = torch.load(Path(logger.log_dir) / "kd_probe_history.pt", weights_only=True)
    assert history["settings"]["units"] == "Tokens(embedding='embedding', pad_id=0)"
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    assert "1_knowledge_points/maps" in events.Tags()["images"]
    assert "1_knowledge_points/fg_ratio" in events.Tags()["scalars"]
    assert any(tag.startswith("1_knowledge_points/maps") for tag in events.Tags()["tensors"])  # the text summary


def test_a_point_probe_logs_a_projection_and_a_mesh(tmp_path: Path) -> None:
    clouds, labels, foreground = _point_set()
    probe = KnowledgePointProbe(clouds, foreground, layer="keep", units=Points(), epochs=[0, 1], **PROBE)
    logger = _fit(tmp_path, RadiusBlindPoints(), (clouds, labels, foreground), probe)
    assert [entry["epoch"] for entry in probe.history] == [0, 1]
    for entry in probe.history:
        assert entry["failed"] is None and entry["entropy"].shape == (6, 10)
        assert not entry["points"][:, 6:].any()  # beyond the radius: never a knowledge point
        assert entry["n_bg"].tolist() == [0] * 6
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert "1_knowledge_points/maps" in events.Tags()["images"]
    assert any(tag.startswith("1_knowledge_points/maps_points") for tag in events.Tags()["tensors"])  # the mesh plugin


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: KnowledgePointProbe(_tokens(), torch.zeros(4, 7, dtype=torch.bool), layer="keep", units=Tokens()),
            r"`masks` of shape \(4, 7\) do not match the token ids of shape \(4, 8\): per-unit foreground flags "
            r"\[4, 8\] are expected",
        ),
        (
            lambda: KnowledgePointProbe(_tokens(), None, layer="keep", units=Tokens()),
            r"`masks` are required: per-unit foreground flags \[4, 8\], got None",
        ),
        (
            lambda: KnowledgePointProbe(_clouds(), torch.zeros(3, 10), layer="keep", units="points"),
            r"`units` must be ImageGrid\(...\), Tokens\(...\) or Points\(...\), got 'points'",
        ),
        (
            lambda: KnowledgePointProbe(_clouds().double()[0], torch.zeros(10), layer="keep", units=Points()),
            r"`points` must be a 3-D float tensor \[N, P, D\], got a 2-D torch.float64 tensor",
        ),
    ],
)
def test_bad_probe_sets_are_refused_at_construction(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


def test_a_missing_embedding_module_is_refused_before_training(tmp_path: Path) -> None:
    tokens, labels, foreground = _token_set()
    probe = KnowledgePointProbe(tokens, foreground, layer="keep", units=Tokens("embed"), **PROBE)
    with pytest.raises(ValueError, match=r"`embedding`='embed'.*'embedding'"):
        _fit(tmp_path, HalfBlindTokens(), (tokens, labels, foreground), probe)


@pytest.mark.parametrize("owner", ["AgreementProbe", "UniCAMProbe"])
@pytest.mark.parametrize("kind", ["tokens", "points"])
def test_image_only_probes_refuse_tokens_and_points_at_construction(owner: str, kind: str) -> None:
    from kd_probe import AgreementProbe, UniCAMProbe

    inputs = _tokens() if kind == "tokens" else _clouds(count=4)
    labels = torch.zeros(inputs.shape[0], dtype=torch.long)
    with pytest.raises(ValueError, match=rf"{owner} measures images \[N, C, H, W\] only \(Grad-CAM and UniCAM maps "):
        if owner == "AgreementProbe":
            AgreementProbe(inputs, labels=labels, teacher_layer="keep", student_layer="keep")
        else:
            UniCAMProbe(inputs, labels, layers=["keep"], cam_layer="keep")


def _token_history(folder: Path, **trainer_kwargs: object) -> dict:
    from lightning.pytorch.loggers import CSVLogger

    tokens, labels, foreground = _token_set()
    probe = KnowledgePointProbe(
        tokens, foreground, layer="keep", units=Tokens("embedding"), epochs=[0, 1], **{**PROBE, "method": "secant"}
    )
    loader = DataLoader(TensorDataset(tokens, labels, foreground), batch_size=3)
    module = DistillationModule(HalfBlindTokens(), lr=1e-30)  # updates far below one ulp: weights fixed
    trainer(folder, callbacks=[probe], logger=CSVLogger(folder), **trainer_kwargs).fit(module, train_dataloaders=loader)
    return torch.load(folder / "lightning_logs" / "version_0" / "kd_probe_history.pt", weights_only=True)


@pytest.mark.slow
def test_a_token_probe_under_ddp_gives_the_single_process_history(tmp_path: Path) -> None:
    single = _token_history(tmp_path / "single")
    ddp = _token_history(tmp_path / "ddp", strategy="ddp_spawn", devices=2)
    assert [e["epoch"] for e in ddp["entries"]] == [0, 1]
    for a, b in zip(ddp["entries"], single["entries"], strict=True):
        for key in ("entropy", "points", "n_fg", "n_bg", "sigma_f", "step", "effective"):
            assert torch.equal(a[key].nan_to_num(7.0), b[key].nan_to_num(7.0)), (a["epoch"], key)
