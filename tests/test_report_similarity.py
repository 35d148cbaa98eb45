"""Issue 34: the report's representation similarity — CKA of the matched pairs and the class-correlation gap,
distilled vs baseline with intervals over half-samples of the probe items, and ``similarity.png``."""

import shutil
from pathlib import Path

import pytest
import torch

from kd_probe.apps.cli import main
from kd_probe.apps.report.similarity import read_similarity, similarity_measures
from kd_probe.core.similarity import MinibatchCKA


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("similarity")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out / "demo"


def test_the_report_compares_cka_and_the_class_gap_with_intervals(demo: Path) -> None:
    report = (demo / "report.md").read_text()
    assert "## How alike the student's representations are to the teacher's (CKA, last probe)" in report
    row = next(line for line in report.splitlines() if line.startswith("| CKA features.relu2 ~ teacher features.relu2"))
    assert row.count("[") == 3  # both runs and their difference have intervals
    assert "| class-correlation gap |" in report and "half-samples of distinct probe items" in report
    assert (demo / "similarity.png").is_file() and "![similarity](similarity.png)" in report


def test_the_measures_rebuild_the_probes_value_from_the_items_it_kept(demo: Path) -> None:
    record = read_similarity(demo / "distilled")
    assert record is not None
    measures = similarity_measures(record)
    x, y = record["items"]["pairs"]["features.relu2"]
    cka = MinibatchCKA()
    cka.update([x.double()], [y.double()])
    assert measures["cka/features.relu2"].estimate == pytest.approx(float(cka.compute()[0, 0]), abs=1e-6)
    everything = torch.arange(x.shape[0])[None]
    rebuilt = measures["cka/features.relu2"].statistic(everything)  # the statistic on all items: the estimate
    assert float(rebuilt[0]) == pytest.approx(measures["cka/features.relu2"].estimate, abs=1e-6)
    assert measures["cka/features.relu2"].interval() is not None


def test_runs_without_the_probe_are_not_compared(demo: Path, tmp_path: Path) -> None:
    for run in ("distilled", "baseline"):
        shutil.copytree(demo / run, tmp_path / run)
    (tmp_path / "baseline" / "kd_probe_similarity.pt").unlink()
    assert main(["report", str(tmp_path / "distilled"), str(tmp_path / "baseline"), "--out", str(tmp_path)]) == 0
    section = (tmp_path / "report.md").read_text().split("## How alike", 1)[1].split("\n## ", 1)[0]
    assert (
        "The baseline run (baseline) was not probed with a SimilarityProbe, so there is nothing to compare; add one "
        "to its Trainer to compare their representations with the teacher's." in section
    )
    assert "| these runs: distilled − baseline |" not in section and "| CKA features.relu2 ~ teacher" in section
