"""Shared pytest set-up: doctests see ``torch``; every test runs in its own scratch folder on a fixed seed, and
the session fails if any test wrote into the source tree."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# the report figures need the optional matplotlib (in the `test` and `report` extras)
collect_ignore = [] if importlib.util.find_spec("matplotlib") else ["kd_probe/apps/report/figures.py"]

ROOT = Path(__file__).resolve().parent
_SKIPPED = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", "dist"}


def source_tree_files(root: Path = ROOT) -> dict[str, int]:
    """Every file under the repository (but the virtual environment, caches and git's own) with its mtime."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in _SKIPPED and not d.endswith(".egg-info")]
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, root)] = os.stat(path).st_mtime_ns
    return files


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE] = source_tree_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    after = source_tree_files()
    written = sorted(path for path, mtime in after.items() if before.get(path) != mtime)
    if written:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"tests wrote into the source tree (run them from a scratch folder): {', '.join(written[:10])}"
        if reporter is not None:
            reporter.write_sep("=", message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[dict]()


@pytest.fixture(autouse=True)
def _scratch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (``runs/``, ``lightning_logs/``) land in the test's own temporary folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
