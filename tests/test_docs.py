"""The docs site: every "methods §N.M" the code cites is a section of the Methods page, every page is in the
navigation, and the site builds with no warning (MkDocs' strict mode) into a temporary folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
METHODS = DOCS / "methods.md"
_CITATION = re.compile(r"§(\d+(?:\.\d+)?)(?:\s*[–-]\s*(\d+(?:\.\d+)?))?")
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)?)\s.*?\{\s*#(s[\d-]+)\s*\}\s*$", re.M)


def methods_sections() -> dict[str, str]:
    """``{"1.2": "s1-2", ...}``: the numbered headings of the Methods page and their anchors."""
    return dict(_HEADING.findall(METHODS.read_text(encoding="utf-8")))


def cited_sections() -> dict[str, set[str]]:
    """``{"1.2": {files}}``: every section number cited with ``§`` in the package, the benchmarks, the demos and the
    example configs (a range ``§1.4–1.6`` cites both ends)."""
    cited: dict[str, set[str]] = {}
    files = [*ROOT.glob("kd_probe/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("demos/*.py")]
    for path in [*files, *ROOT.glob("examples/*.yaml")]:
        for match in _CITATION.finditer(path.read_text(encoding="utf-8")):
            for number in filter(None, match.groups()):
                cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_every_cited_section_exists_on_the_methods_page() -> None:
    sections, cited = methods_sections(), cited_sections()
    assert {"1.2", "1.3", "3", "4"} <= set(cited), "the code cites the Methods page (methods §N.M)"
    missing = {number: sorted(files) for number, files in cited.items() if number not in sections}
    assert not missing, f"sections cited but not on docs/methods.md: {missing}"
    for number, anchor in sections.items():
        assert anchor == "s" + number.replace(".", "-"), f"§{number} has the anchor #{anchor}"


def test_no_docstring_cites_the_old_spec() -> None:
    stale = [str(p.relative_to(ROOT)) for p in ROOT.glob("kd_probe/**/*.py") if "spec §" in p.read_text("utf-8")]
    assert not stale, f"'spec §' names a document that is not in the repository: {stale}"


def test_every_page_is_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", config, re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == listed, f"pages not in the nav: {pages - listed}; nav entries without a page: {listed - pages}"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,  # pymdownx.snippets reads CHANGELOG.md from here; nothing is written here
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed (pip install -e '.[docs]'):\n{done.stderr[-6000:]}"
    assert "WARNING" not in done.stderr, done.stderr[-6000:]
    methods = (site / "methods" / "index.html").read_text(encoding="utf-8")
    assert all(f'id="{anchor}"' in methods for anchor in methods_sections().values())
    callbacks = (site / "api" / "callbacks" / "index.html").read_text(encoding="utf-8")
    assert "KnowledgePointProbe" in callbacks and "Logged metrics" in callbacks, "the API pages hold the docstrings"
    assert (site / "changelog" / "index.html").read_text(encoding="utf-8").count("<h2") >= 1
