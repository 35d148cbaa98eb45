"""The session-level check of conftest.py: a file written into the source tree is found."""

from pathlib import Path

from conftest import source_tree_files


def test_a_file_written_into_the_tree_is_found(tmp_path: Path) -> None:
    (tmp_path / "kd_probe").mkdir()
    (tmp_path / "kd_probe" / "a.py").write_text("x = 1\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "ignored.py").write_text("")
    before = source_tree_files(tmp_path)
    (tmp_path / "kd_probe_history.pt").write_bytes(b"0")
    after = source_tree_files(tmp_path)
    assert sorted(set(after) - set(before)) == ["kd_probe_history.pt"]
    assert "a.py" in str(before) and not any(".venv" in path for path in after)


def test_tests_run_in_a_scratch_folder() -> None:
    assert Path.cwd().resolve() != Path(__file__).resolve().parents[1]
