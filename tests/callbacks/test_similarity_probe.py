"""Issue 34: ``SimilarityProbe`` — teacher × student CKA and the class-correlation gap during training (methods §7):
known answers, the estimator of the core, its files and tags, bad input in one sentence, two processes equal one."""

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kd_probe import DistillationModule, SimilarityProbe
from kd_probe.core.layers import capture_outputs, eval_forward
from kd_probe.core.similarity import MinibatchCKA, class_correlation_gap
from tests.callbacks.conftest import trainer
from tests.callbacks.keyed_grids import assert_grids_decode_with_their_keys
from tests.callbacks.test_agreement_ddp import assert_same_entries, net, odd_data

LAYERS = ["features.relu1", "features.relu2"]


def run(folder: Path, probe: SimilarityProbe, module: DistillationModule | None = None, **options: Any) -> Path:
    """One epoch of a student whose weights stay fixed (probes at epochs 0 and 1); the run folder."""
    logger = TensorBoardLogger(folder, name="run", version=0)
    module = module or DistillationModule(net(1), net(0), lr=1e-30)
    trainer(folder, max_epochs=1, logger=logger, callbacks=[probe], **options).fit(module, datamodule=odd_data())
    return folder / "run" / "version_0"


def pooled(network: torch.nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    with capture_outputs(network, LAYERS) as outputs:
        logits = eval_forward(network, images)
    return [outputs[layer].mean(dim=(2, 3)).double() for layer in LAYERS], logits.double()


def test_a_student_identical_to_its_teacher_has_cka_one_and_no_class_gap(tmp_path: Path) -> None:
    probe = SimilarityProbe(odd_data(), student_layers=LAYERS, teacher_layers=LAYERS)
    run(tmp_path, probe, DistillationModule(net(0), net(0), lr=1e-30))
    for entry in probe.history:
        assert entry["failed"] is None if "failed" in entry else True
        assert entry["cka_mean"] == pytest.approx(1.0, abs=1e-12)
        assert torch.diagonal(entry["cka"]).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
        assert entry["class_gap"] == pytest.approx(0.0, abs=1e-12)


def test_the_matrix_is_the_cores_minibatch_cka_over_the_probes_chunks(tmp_path: Path) -> None:
    """Five items in chunks of 4: one chunk of 5 (a chunk of 1 would be too small for the unbiased HSIC)."""
    probe = SimilarityProbe(odd_data(), student_layers=LAYERS, teacher_layers=LAYERS[::-1], chunk=4)
    folder = run(tmp_path, probe)
    images = probe.images
    xs, student_logits = pooled(net(1), images)
    ys, teacher_logits = pooled(net(0), images)
    expected = MinibatchCKA()
    expected.update(xs, ys[::-1])
    assert [(c.start, c.stop) for c in probe._chunks()] == [(0, 5)]
    entry = probe.history[-1]
    torch.testing.assert_close(entry["cka"], expected.compute().float(), rtol=0, atol=1e-6)
    assert entry["cka/features.relu1"] == pytest.approx(float(expected.compute()[0, 0]), abs=1e-9)
    gap = class_correlation_gap(teacher_logits, student_logits)
    off = gap[~torch.eye(3, dtype=torch.bool)]
    assert entry["class_gap"] == pytest.approx(float(off.abs().mean()), abs=1e-9)
    record = torch.load(folder / "kd_probe_similarity.pt", weights_only=True)
    assert record["pairs"] == [["features.relu1", "features.relu2"], ["features.relu2", "features.relu1"]]
    assert [e["epoch"] for e in record["entries"]] == [0, 1]
    kept_x, kept_y = record["items"]["pairs"]["features.relu1"]  # the last probe's items, for the report
    torch.testing.assert_close(kept_x.double(), xs[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(kept_y.double(), ys[1], rtol=0, atol=1e-6)
    assert record["items"]["logits"]["teacher"].shape == (5, 3)
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"5_similarity/cka/features.relu1", "5_similarity/cka_mean", "5_similarity/class_gap"} <= tags
    assert {"5_similarity/cka_matrix", "5_similarity/class_gap_matrix"} <= set(events.Tags()["images"])
    assert_grids_decode_with_their_keys(events)  # each heat map with the ramp of its fixed scale under it


def test_default_layers_are_the_stage_outputs(tmp_path: Path) -> None:
    probe = SimilarityProbe(odd_data(), class_gap=False, log_images=False)
    run(tmp_path, probe)
    assert probe.student_layers == probe.teacher_layers == ["features.relu1", "features.relu2"]  # one conv per stage
    assert "class_gap" not in probe.history[-1] and math.isfinite(probe.history[-1]["cka_mean"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"student_layers": "features.relu1"}, "`student_layers` must be None or a non-empty list of layer names"),
        ({"chunk": 3}, "`chunk` must be an integer ≥ 4 (items per chunk), got 3."),
        ({"features": "mean"}, "`features`"),
        ({"class_gap": 1}, "`class_gap` must be True or False, got 1."),
    ],
)
def test_bad_settings_are_one_sentence(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        SimilarityProbe(odd_data(), **options)


def test_fewer_than_four_items_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"^`images` holds 3 probe items; the unbiased HSIC behind CKA needs at least 4"
    ):
        SimilarityProbe(torch.rand(3, 3, 16, 16))


@pytest.mark.slow
def test_two_processes_record_the_one_process_values(tmp_path: Path) -> None:
    """Nine items in chunks of 4 (chunks of 4 and 5): each process takes one, and the terms are added in order."""
    images = torch.rand(9, 3, 16, 16, generator=torch.Generator().manual_seed(3))

    def probe() -> SimilarityProbe:
        return SimilarityProbe(images, student_layers=LAYERS, teacher_layers=LAYERS, chunk=4, log_images=False)

    single = run(tmp_path / "single", probe())
    ddp = run(tmp_path / "ddp", probe(), strategy="ddp_spawn", devices=2)
    one = torch.load(single / "kd_probe_similarity.pt", weights_only=True)
    two = torch.load(ddp / "kd_probe_similarity.pt", weights_only=True)
    assert [entry.get("failed") for entry in one["entries"]] == [None, None]
    assert_same_entries(two["entries"], one["entries"])
