"""The package a user installs: the wheel built from this tree, installed into a fresh virtual environment.

What :func:`test_the_built_wheel_installs_and_runs_in_a_fresh_environment` proves, and how:

1. **The wheel builds from the tracked tree alone.** The files git knows about (tracked, or new and not ignored;
   a plain copy without ``.git``/``.venv``/build output when git is not there) are copied to a temporary folder
   and ``pip wheel --no-deps --no-build-isolation --no-index`` builds the wheel there, so no build folder or
   ``*.egg-info`` lands in the source tree and nothing is downloaded (the installed setuptools builds it).
2. **The wheel holds what a user needs**: the ``kd_probe`` package only (no tests, benchmarks or demos), the
   ``py.typed`` marker (PEP 561: type checkers read its hints), the ``kd-probe`` console script, and metadata
   with the version of ``kd_probe/__init__.py`` (the one place it is written) and the ``Typing :: Typed``
   classifier.
3. **``pip install`` of the wheel resolves its declared dependencies.** A new virtual environment is created in
   the temporary folder. It cannot download torch, so it sees the already-installed packages through a ``.pth``
   file (``venv --system-site-packages`` would give it the base interpreter's packages, not this environment's)
   — but only the dependency closure of the wheel's ``Requires-Dist``, linked into a folder of its own, never
   kd_probe itself (nor its editable-install hook). pip then installs the wheel *with* dependency resolution and
   ``--no-index``: a requirement that is not declared, or declared but not installed here, fails the install or
   the run below, as it would for a user.
4. **The installed package works from anywhere**: from a scratch working directory, ``import kd_probe`` comes
   from the new environment's ``site-packages`` (not this checkout), ``__version__`` and the installed metadata
   agree with the source, ``kd-probe --version`` answers, and ``kd-probe demo --quick --out <tmp>`` exits 0
   and writes its report (``pip install kd_probe`` then ``kd-probe demo`` works).

About 15 s on an idle 2-core CPU (most of it the quick demo), a minute or two on a busy one; marked ``slow``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_NOT_COPIED = (
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "runs",
    "lightning_logs",
)


def source_version() -> str:
    """``__version__`` as written in ``kd_probe/__init__.py`` (read, not imported)."""
    match = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "kd_probe" / "__init__.py").read_text(), re.M)
    assert match, 'kd_probe/__init__.py must set __version__ = "..."'
    return match.group(1)


def copy_source_tree(destination: Path) -> None:
    """The files git would put in a commit (tracked or new, not ignored), else the tree without its build output."""
    try:
        listed = (
            subprocess.run(
                ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split("\0")
        )
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        return
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # listed but deleted in the working tree: skipped
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def _requirement_class():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries it
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def dependency_closure(requires: list[str]) -> list[metadata.Distribution]:
    """The installed distributions that ``requires`` (``Requires-Dist`` lines) pull in, transitively, with extras."""
    requirement = _requirement_class()
    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [(line, frozenset()) for line in requires]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        line, extras = todo.pop()
        req = requirement(line)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            continue
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if (key, frozenset(req.extras)) in seen:
            continue
        seen.add((key, frozenset(req.extras)))
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"kd_probe requires {line!r}, which is not installed here (the test installs offline)")
        found[key] = dist
        todo += [(sub, frozenset(req.extras)) for sub in dist.requires or []]
    return list(found.values())


def link_distributions(dists: list[metadata.Distribution], folder: Path) -> None:
    """Symlink each distribution's top-level files and folders (from its RECORD) into ``folder``."""
    folder.mkdir()
    for dist in dists:
        site = Path(str(dist.locate_file("")))
        tops = {Path(f).parts[0] for f in dist.files or []}
        info = getattr(dist, "_path", None)  # the .dist-info folder, also when RECORD is missing
        if info is not None:
            tops.add(Path(str(info)).name)
        for top in sorted(tops - {"..", "__pycache__"}):
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)


def run(command: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    args = [str(c) for c in command]
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def _build_output_in_tree() -> dict[str, int]:
    names = [p for p in ROOT.iterdir() if p.name in ("build", "dist") or p.name.endswith(".egg-info")]
    return {p.name: p.stat().st_mtime_ns for p in names}


@pytest.mark.slow
def test_the_built_wheel_installs_and_runs_in_a_fresh_environment(tmp_path: Path) -> None:
    import setuptools  # noqa: F401  (the `test` extra installs it: the wheel is built offline with it)

    before = _build_output_in_tree()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("PIP_")
    }
    env["PYTHONNOUSERSITE"] = "1"
    pip = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", "--no-input"]

    # 1. build the wheel from a copy of the tree
    source, dist = tmp_path / "src", tmp_path / "dist"
    copy_source_tree(source)
    run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir", "-w", dist, source],
        tmp_path,
        env,
    )
    (wheel,) = dist.glob("kd_probe-*.whl")

    # 2. what the wheel holds
    version = source_version()
    assert wheel.name.startswith(f"kd_probe-{version}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"kd_probe-{version}.dist-info"
        wheel_metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "kd_probe/py.typed" in names
    assert {"kd_probe/__init__.py", "kd_probe/apps/cli.py"} <= set(names)
    assert {n.split("/")[0] for n in names} == {"kd_probe", info}, "only the kd_probe package is shipped"
    assert f"\nVersion: {version}\n" in wheel_metadata
    assert "Classifier: Typing :: Typed" in wheel_metadata
    assert "kd-probe = kd_probe.apps.cli:main" in entry_points
    requires = [line.split(": ", 1)[1] for line in wheel_metadata.splitlines() if line.startswith("Requires-Dist: ")]

    # 3. a fresh virtual environment that sees only the wheel's installed dependencies; pip resolves them offline
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    if not python.exists():  # Windows layout
        python = venv / "Scripts" / "python.exe"
    site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip()
    )
    dependencies = tmp_path / "dependencies"
    link_distributions(dependency_closure(requires), dependencies)
    assert not list(dependencies.glob("kd_probe*")) and not list(dependencies.glob("__editable__*"))
    (site / "_kd_probe_test_dependencies.pth").write_text(f"import site; site.addsitedir({str(dependencies)!r})\n")
    run([*pip, "--python", python, "install", "--no-index", "--no-cache-dir", wheel], tmp_path, env)

    # 4. the installed package, from a scratch working directory
    work = tmp_path / "work"
    work.mkdir()
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    shown = run(
        [
            python,
            "-c",
            "import kd_probe, importlib.metadata as m; "
            "print(kd_probe.__version__, m.version('kd_probe'), kd_probe.__file__, sep='\\n')",
        ],
        work,
        env,
    )
    module_version, installed_version, module_file = shown.stdout.strip().splitlines()[-3:]
    assert module_version == installed_version == version
    assert Path(module_file).resolve().is_relative_to(site.resolve()), module_file
    assert not Path(module_file).resolve().is_relative_to(ROOT)
    assert (site / "kd_probe" / "py.typed").is_file()
    command = shutil.which("kd-probe", path=str(python.parent))
    assert command is not None and Path(command).parent == python.parent
    assert version in run([command, "--version"], work, env).stdout
    out = tmp_path / "out"
    run([command, "demo", "--quick", "--out", out], work, env)
    assert list(out.glob("*/report.md")), "the quick demo writes its report"

    assert _build_output_in_tree() == before, "the build must not write build/, dist/ or *.egg-info into the tree"
