#!/usr/bin/env bash
# One command for a lent GPU machine (the device tool runs it in the repository root; $OUT comes back):
# installs kd_probe over the machine's own torch/Lightning (no dependency is replaced), then runs the GPU
# benchmark (about 5 minutes on an H200) and times the default demo on the GPU (goal: under 60 s).
# SMOKE=1 runs tiny sizes and a --quick demo, to check the script on any machine.
set -euo pipefail
OUT="${OUT:-$(mktemp -d)}"
python -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -2 || python -m pip install --no-deps -q -e .
python -c "import torch, kd_probe; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'kd_probe', kd_probe.__version__)"
smoke=(); quick=()
if [[ "${SMOKE:-0}" == 1 ]]; then smoke=(--smoke); quick=(--quick); fi
python benchmarks/bench_gpu.py "${smoke[@]}" --json "$OUT/bench_gpu.json" | tee "$OUT/bench_gpu.md"
start=$(date +%s)
kd-probe demo "${quick[@]}" --out "$OUT/runs" --experiment gpu > "$OUT/demo.log" 2>&1
echo "demo: $(( $(date +%s) - start )) s" | tee -a "$OUT/bench_gpu.md"
grep -E "^  (teacher|distilled|baseline)" "$OUT/demo.log" | tee -a "$OUT/bench_gpu.md"
