"""The Python snippets of the README and of the documentation pages work when pasted as is.

The code block that follows the ``<!-- quickstart ... -->`` marker in README.md (every such block, in order, as
one script, if there are several) is what a user copies first. The fast tests check its shape (a short, complete
Python example that puts a kd_probe callback on a Trainer, names its runs and prints their accuracies, without
placeholders), that docs/getting-started.md shows the same code, and that every snippet of the pages below
compiles. The slow one runs the text exactly as written, in a fresh interpreter from a scratch working
directory, so everything it writes (``runs/``, ``lightning_logs/``) lands there and never in the source tree:
the Quick start, then every other ``python`` block of ``PAGES`` (README.md first, then the docs pages, each
page's blocks in order; a page not written yet is skipped), in the same interpreter (a later snippet may use
what the Quick start made: ``data``, ``teacher``, its imports) — but for the pages of ``SELF_CONTAINED``, whose
blocks run on their own in a fresh interpreter and folder, so that they cannot lean on another snippet. A block identical to one already run (the
Quick start, or the same example shown on two pages) runs once. A failing snippet is named by its page and
line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = (  # the pages whose snippets the slow test runs, in this order, after the Quick start
    "README.md",
    "docs/getting-started.md",
    "docs/distillation.md",
    "docs/probes/knowledge-points.md",
    "docs/probes/weights.md",
    "docs/probes/agreement.md",
    "docs/probes/unicam.md",
    "docs/probes/similarity.md",
    "docs/data-and-models.md",
    "docs/configuration.md",
    "docs/probe-anywhere.md",
    "docs/your-own-model.md",
)
SELF_CONTAINED = ("docs/your-own-model.md",)  # pages whose snippets run alone, in a fresh interpreter and folder
MARKER = "<!-- quickstart"
_BLOCK = re.compile(r"```python\n(.*?)\n```", re.S)
_ANY_BLOCK = re.compile(r"^( *)```python\n(.*?)\n\1```", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Every ``python`` block of a page, dedented, with the number of the line its code starts on."""
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


def snippets() -> list[tuple[str, int, str]]:
    """What the slow test runs: (page, line, code) for the Quick start, then each new block of ``PAGES``."""
    text = README.read_text(encoding="utf-8")
    quick = quickstart_code(text)
    readme_blocks = [code.strip() for _, code in python_blocks(text)]
    assert readme_blocks.count(quick.strip()) == 1, "README.md shows its Quick start once, as one python block"
    plan = [("README.md", text[: text.index(MARKER)].count("\n") + 3, quick)]
    seen = {quick.strip()}
    for page in PAGES:
        path = ROOT / page
        if not path.exists():  # a page not written yet
            continue
        for line, code in python_blocks(path.read_text(encoding="utf-8")):
            if code.strip() not in seen:
                seen.add(code.strip())
                plan.append((page, line, code))
    return plan


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


def test_getting_started_shows_the_readme_quick_start() -> None:
    quick = quickstart_code(README.read_text(encoding="utf-8")).strip()
    page = ROOT / "docs" / "getting-started.md"
    shown = [code.strip() for _, code in python_blocks(page.read_text(encoding="utf-8"))]
    assert quick in shown, "docs/getting-started.md shows README.md's Quick start, the same code block"


def test_every_snippet_compiles() -> None:
    for page, line, code in snippets():
        compile(code, f"{page}:{line}", "exec")  # a SyntaxError names the page and line


_RUNNER = """
import sys
namespace = {"__name__": "__main__"}
for page, line, code in BLOCKS:
    print(f"--- {page} line {line}", flush=True)
    exec(compile(code, f"{page}:{line}", "exec"), namespace)
"""


def _run(blocks: list[tuple[str, int, str]], folder: Path) -> str:
    script = folder / "doc_snippets.py"
    script.write_text(f"BLOCKS = {blocks!r}\n{_RUNNER}", encoding="utf-8")
    done = subprocess.run([sys.executable, script.name], cwd=folder, capture_output=True, text=True, timeout=1800)
    started = re.findall(r"^--- (.+ line \d+)$", done.stdout, re.M)
    where = started[-1] if started else "before the first snippet"
    assert done.returncode == 0, f"the snippet at {where} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_quick_start_and_every_other_snippet_run_as_pasted(tmp_path: Path) -> None:
    plan = snippets()
    others = plan[1:]
    assert len(others) >= 8, (
        f"the Quick start first, then at least 8 other python blocks of {', '.join(PAGES)}; found "
        f"{len(others)}: {[f'{page}:{line}' for page, line, _ in others]}"
    )
    alone = [block for block in plan if block[0] in SELF_CONTAINED]
    out = _run([block for block in plan if block[0] not in SELF_CONTAINED], tmp_path)
    (tmp_path / "alone").mkdir()
    own = _run(alone, tmp_path / "alone")  # uses nothing another snippet made
    assert re.search(r"^epoch 12: N_fg +[\d.]+, N_bg +[\d.]+, fg_ratio [\d.]+$", own, re.M), own[-2000:]
    for run in ("teacher", "distilled", "baseline"):
        accuracy = re.search(rf"^{run}: validation accuracy (\d+\.\d)%", out, re.M)
        assert accuracy, f"the Quick start prints the {run}'s accuracy:\n{out[-3000:]}"
        assert list((tmp_path / "runs" / run).glob("events.out.tfevents.*")), f"a run named {run}"
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("kd_probe_*") if p.is_file()]
    assert written, "its kd_probe callbacks probed the students and wrote their files under the working directory"
