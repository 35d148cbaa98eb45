"""Issue 32: ``UniCAMProbe`` shares its images out over the DDP ranks — features and UniCAM maps — and gathers
the features, so that the distance correlations are those of the whole batch: a two-process run records what
one process records, and a failure on one rank fails the probe on every rank."""

import json
from pathlib import Path

import pytest
import torch

from kd_probe import UniCAMProbe
from tests.callbacks.test_agreement_ddp import assert_same, assert_same_entries, fit, net, odd_data, scalars

PAIRS = [("features.relu1", "features.relu1"), "features.relu2"]


def unicam_probe(max_batch: int | None, paper: bool) -> UniCAMProbe:
    """The default probe, or the paper's settings (flattened features, rows normalised, a reference)."""
    if paper:
        return UniCAMProbe(
            odd_data(),
            layers=PAIRS,
            cam_layer="features.relu2",
            max_batch=max_batch,
            features="flattened",
            normalize_rows=True,
            reference=net(2),
        )
    return UniCAMProbe(odd_data(), layers=PAIRS, cam_layer="features.relu2", max_batch=max_batch)


@pytest.mark.slow
@pytest.mark.parametrize(("max_batch", "paper"), [(None, False), (2, True)], ids=["whole-pooled", "chunks-paper"])
def test_two_processes_record_the_one_process_values_and_fail_together(
    tmp_path: Path, max_batch: int | None, paper: bool
) -> None:
    single = fit(tmp_path / "single", unicam_probe(max_batch, paper))
    ddp = fit(tmp_path / "ddp", unicam_probe(max_batch, paper), strategy="ddp_spawn", devices=2)
    one = torch.load(single / "kd_probe_unicam.pt", weights_only=True)
    two = torch.load(ddp / "kd_probe_unicam.pt", weights_only=True)
    assert [e["epoch"] for e in two["entries"]] == [0, 1, 2]  # once per epoch, not once per process
    assert [e.get("failed") for e in one["entries"]] == [None] * 3  # rank 1 alone breaks: a single run never does
    assert_same_entries(two["entries"][:2], one["entries"][:2])
    assert {"fss/features.relu1", "rs/distilled/features.relu2", "distilled_score"} <= set(one["entries"][0])
    assert_same(two["maps"], one["maps"][:2], "maps")  # every image's maps: rank 0's and rank 1's, in order
    assert two["maps"][0]["distilled"].shape == (5, 16, 16)
    assert one["distances"]["epoch"] == 2 and two["distances"]["epoch"] == 1  # the last successful probe's
    assert two["distances"]["labels"].shape == (5, 5)
    del one["distances"]["epoch"], two["distances"]["epoch"]  # the weights are fixed: epochs 1 and 2 probe alike
    assert_same(two["distances"], one["distances"], "distances")
    assert (ddp / "kd_probe_unicam.pt").exists() and not (tmp_path / "ddp" / "kd_probe_unicam.pt").exists()
    # logged once per probe, by rank zero, the values of the file
    fss = [e["fss/features.relu2"] for e in two["entries"][:2]]
    assert scalars(ddp, "4_unicam/fss/features.relu2") == pytest.approx(fss, abs=1e-7)
    # the student broke on rank 1 only: every rank records the probe of epoch 2 as failed, with rank 1's reason
    failed = two["entries"][2]["failed"]
    assert failed.startswith("FloatingPointError: the student's features at 'features.relu1' hold NaN")
    assert failed.endswith("(rank 1)")
    histories = [json.loads((tmp_path / "ddp" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert histories[0] == histories[1] == [[0, None], [1, None], [2, failed]]
