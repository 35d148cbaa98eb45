"""``benchmarks/bench_gpu.py --smoke`` runs on any device (the GPU figures come from a GPU machine; issue 32)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_its_smoke_sizes_anywhere(tmp_path: Path) -> None:
    found = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--json", str(tmp_path / "gpu.json")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert found.returncode == 0, found.stderr
    assert "| case | engine | batch | maps/s | TFLOP/s (share of the peak) | peak GiB |" in found.stdout
    figures = json.loads((tmp_path / "gpu.json").read_text())
    assert set(figures["peaks"]) == {"matmul bf16", "matmul tf32", "conv bf16"}
    assert [(row["case"].split(",")[0], row["engine"]) for row in figures["cases"]] == [
        (case, engine) for case in ("demo VGG", "ResNet-18", "ResNet-18") for engine in ("faithful", "secant")
    ]
    assert all(row["maps_per_s"] > 0 and row["tflops"] > 0 for row in figures["cases"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu.json"]  # nothing else written
