"""Check: does the README's Quick start show distillation helping, whatever the seed?

Runs the Quick start code block of README.md exactly as written, once per seed, with only its
``pl.seed_everything(0)`` changed to the seed, each in a fresh interpreter and its own scratch folder, and prints
the validation accuracies it prints (teacher, distilled, baseline) and the distilled − baseline gain per seed.

Run: ``python demos/quick_start_seeds.py [--seeds 3]`` from the repository root (about 2–3 minutes per seed on a
2-core CPU). Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SEED_LINE = "pl.seed_everything(0)"
ROLES = ("teacher", "distilled", "baseline")


def quick_start() -> str:
    """The Python block after README's ``<!-- quickstart`` marker."""
    text = README.read_text(encoding="utf-8")
    after = text.split("<!-- quickstart", 1)[1].split("-->", 1)[1]
    match = re.match(r"\s*```python\n(.*?)\n```", after, re.S)
    if match is None or SEED_LINE not in match.group(1):
        raise SystemExit(f"README.md's Quick start must be a python block that calls {SEED_LINE}")
    return match.group(1) + "\n"


def accuracies(code: str, seed: int) -> dict[str, float]:
    """Run the Quick start with ``seed``; the validation accuracy (%) it prints for each run."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "quick_start.py"
        script.write_text(code.replace(SEED_LINE, f"pl.seed_everything({seed})"), encoding="utf-8")
        done = subprocess.run([sys.executable, script.name], cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the Quick start failed with seed {seed}:\n{done.stderr[-3000:]}")
    found = dict(re.findall(r"^(teacher|distilled|baseline): validation accuracy (\d+\.\d)%", done.stdout, re.M))
    return {role: float(found[role]) for role in ROLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    args = parser.parse_args()
    code = quick_start()
    print("seed  teacher  distilled  baseline  gain (points)")
    gains = []
    for seed in range(args.seeds):
        found = accuracies(code, seed)
        gains.append(found["distilled"] - found["baseline"])
        print(
            f"{seed:>4}  {found['teacher']:6.1f}%  {found['distilled']:8.1f}%  {found['baseline']:7.1f}%  "
            f"{gains[-1]:+.1f}",
            flush=True,
        )
    wins = sum(gain > 0 for gain in gains)
    print(f"distilled beats baseline on {wins} of {len(gains)} seeds; mean gain {sum(gains) / len(gains):+.1f} points")


if __name__ == "__main__":
    main()
