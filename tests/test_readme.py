"""The README's Quick start works when pasted as is.

The code block that follows the ``<!-- quickstart ... -->`` marker in README.md (every such block, in order, as
one script, if there are several) is what a user copies. The fast test checks its shape (a short, complete
Python example that puts a kd_probe callback on a Trainer, without placeholders); the slow one runs the text
exactly as written, in a fresh interpreter from a scratch working directory, so everything it writes
(``lightning_logs/``) lands there and never in the source tree.
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
    assert len(lines) <= 12, f"the Quick start has {len(lines)} lines of code; a user pastes at most about 12"
    assert "..." not in code and not re.search(r"<[A-Za-z_][\w ]*>", code), "no placeholders: it runs as pasted"
    assert "callbacks=[" in code and "from kd_probe import" in code, "it puts a kd_probe callback on a Trainer"


@pytest.mark.slow
def test_the_quick_start_runs_as_pasted(tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart_code(README.read_text(encoding="utf-8")), encoding="utf-8")
    done = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"the README's Quick start failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("kd_probe_*") if p.is_file()]
    assert written, "its kd_probe callback probed the student and wrote its files under the working directory"
