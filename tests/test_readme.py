"""The README's Python snippets work when pasted as is.

The code block that follows the ``<!-- quickstart ... -->`` marker in README.md (every such block, in order, as
one script, if there are several) is what a user copies first. The fast test checks its shape (a short, complete
Python example that puts a kd_probe callback on a Trainer, names its runs and prints their accuracies, without
placeholders); the slow ones run the text exactly as written, in a fresh interpreter from a scratch working
directory, so everything it writes (``runs/``, ``lightning_logs/``) lands there and never in the source tree:
the Quick start, then every other ``python`` block of the README in order, in the same interpreter (a later
snippet may use what the Quick start made: ``data``, ``teacher``, its imports).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- quickstart"
_BLOCK = re.compile(r"```python\n(.*?)\n```", re.S)
_ANY_BLOCK = re.compile(r"^( *)```python\n(.*?)\n\1```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Every ``python`` block of the README, dedented, with the number of the line its code starts on."""
    blocks = []
    for match in _ANY_BLOCK.finditer(text):
        indent = len(match.group(1))
        code = "\n".join(line[indent:] for line in match.group(2).splitlines())
        blocks.append((text.count("\n", 0, match.start(2)) + 1, code + "\n"))
    return blocks


def quickstart_code(text: str) -> str:
    """The Python block right after each quick-start marker (only blank lines between), joined in order."""
    blocks = []
    for part in text.split(MARKER)[1:]:
        after_marker = part.split("-->", 1)[1].lstrip("\n")
        match = _BLOCK.match(after_marker)
        assert match, f"README.md: a {MARKER} ... --> marker must be followed by a ```python block"
        blocks.append(match.group(1))
    assert blocks, f"README.md has no {MARKER} ... --> marker before its Quick start code"
    return "\n\n".join(blocks) + "\n"


def test_the_quick_start_is_a_short_complete_example() -> None:
    text = README.read_text(encoding="utf-8")
    code = quickstart_code(text)
    assert text.index(MARKER) > text.index("## Quick start"), "the marked block is the Quick start's"
    compile(code, "README.md quick start", "exec")
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 22, f"the Quick start has {len(lines)} lines of code; a user reads at most about 20"
    assert "..." not in code and not re.search(r"<[A-Za-z_][\w ]*>", code), "no placeholders: it runs as pasted"
    assert "callbacks=[" in code and "from kd_probe import" in code, "it puts a kd_probe callback on a Trainer"
    for run in ("teacher", "distilled", "baseline"):
        assert f'fit("{run}"' in code, f"a run named {run}"
    assert "validation accuracy" in code and "print(" in code, "it prints the accuracies"


_RUNNER = """
import sys
namespace = {"__name__": "__main__"}
for line, code in BLOCKS:
    print(f"--- README.md line {line}", flush=True)
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
"""


def _run(blocks: list[tuple[int, str]], folder: Path) -> str:
    script = folder / "readme_snippets.py"
    script.write_text(f"BLOCKS = {blocks!r}\n{_RUNNER}", encoding="utf-8")
    done = subprocess.run([sys.executable, script.name], cwd=folder, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"a README snippet failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_quick_start_and_every_other_snippet_run_as_pasted(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    quick = quickstart_code(text)
    blocks = python_blocks(text)
    others = [(line, code) for line, code in blocks if code.strip() != quick.strip()]
    assert len(others) == len(blocks) - 1 >= 8, "the Quick start first, then every other python block"
    out = _run([(text[: text.index(MARKER)].count("\n") + 3, quick), *others], tmp_path)
    for run in ("teacher", "distilled", "baseline"):
        accuracy = re.search(rf"^{run}: validation accuracy (\d+\.\d)%", out, re.M)
        assert accuracy, f"the Quick start prints the {run}'s accuracy:\n{out[-3000:]}"
        assert list((tmp_path / "runs" / run).glob("events.out.tfevents.*")), f"a run named {run}"
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("kd_probe_*") if p.is_file()]
    assert written, "its kd_probe callbacks probed the students and wrote their files under the working directory"
