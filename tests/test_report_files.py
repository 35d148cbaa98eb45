"""The report on real probe files: weights-only loading, hostile and damaged files, paths read from files,
protocols and seeds, atomic writes. The runs are two tiny fits (about a second each), copied per test."""

import ast
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from kd_probe import AgreementProbe, DistillationModule, KnowledgePointProbe, UniCAMProbe
from kd_probe.apps.cli import main
from kd_probe.apps.report.write import _format, write_report
from tests.callbacks.conftest import PROBE, tiny_data, tiny_net, trainer

PAIRS = [("features.relu1", "features.relu1"), "features.relu2"]
SOURCE = Path(__file__).resolve().parents[1] / "kd_probe"


def tiny_run_probes(data: Any) -> list[Any]:
    """The knowledge-point (epochs 0 and 1), UniCAM and agreement probes of the tiny report runs."""
    return [
        KnowledgePointProbe(data, layer="features.bn2", epochs=[0, 1], **PROBE),
        UniCAMProbe(data, layers=PAIRS, cam_layer="features.relu2", teacher=tiny_net()),
        AgreementProbe(data, teacher_layer="features.relu2", student_layer="features.relu2", teacher=tiny_net()),
    ]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``e/distilled`` and ``e/baseline``, each with every probe file and a ``kd_probe_run.json`` (protocol hinton)."""
    root = tmp_path_factory.mktemp("runs")
    data = tiny_data()
    for role in ("distilled", "baseline"):
        probes = tiny_run_probes(data)
        if role == "distilled":  # a named probe writes kd_probe_history_<name>.pt
            probes.append(KnowledgePointProbe(data, layer="features.bn1", name="early", epochs=[1], **PROBE))
        logger = TensorBoardLogger(root / "e", name=role, version="")
        module = DistillationModule(tiny_net(), tiny_net()) if role == "distilled" else DistillationModule(tiny_net())
        trainer(root, max_epochs=1, logger=logger, callbacks=probes).fit(module, datamodule=data)
        info = {"run": role, "role": role, "seed": 0, "protocol": "hinton", "test_accuracy": 0.5}
        (root / "e" / role / "kd_probe_run.json").write_text(json.dumps(info))
    return root / "e"


@pytest.fixture
def runs(tiny_runs: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny experiment folder."""
    return Path(shutil.copytree(tiny_runs, tmp_path / "e"))


def _set(path: Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _left_out(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("kd-probe report: left out ")]


def test_every_torch_load_in_kd_probe_is_weights_only() -> None:
    calls = []
    for file in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                options = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((file.name, options.get("weights_only")))
    assert calls and all(value == "True" for _, value in calls), calls


def test_every_file_the_probes_write_loads_weights_only_and_reports(runs: Path, capsys: pytest.CaptureFixture) -> None:
    written = sorted(str(p.relative_to(runs)) for p in runs.glob("*/kd_probe_*.pt"))
    assert written == [
        "baseline/kd_probe_agreement.pt",
        "baseline/kd_probe_history.pt",
        "baseline/kd_probe_unicam.pt",
        "distilled/kd_probe_agreement.pt",
        "distilled/kd_probe_history.pt",
        "distilled/kd_probe_history_early.pt",
        "distilled/kd_probe_unicam.pt",
    ]
    for name in written:
        record = torch.load(runs / name, weights_only=True)
        assert record["version"] == 1 and record["entries"], name
    assert main(["report", str(runs), "--no-figures"]) == 0
    captured = capsys.readouterr()
    assert _left_out(captured.err) == [] and "## Left out" not in captured.out
    assert (
        "| distilled | distilled | 0 | 50.0% |" in captured.out
        and "| baseline | baseline | 0 | 50.0% |" in captured.out
    )
    for role in ("distilled", "baseline"):  # each row shows its own run's numbers (runs are read baseline first)
        summary = json.loads((runs / role / "kd_probe_summary.json").read_text())
        row = next(line for line in captured.out.splitlines() if line.startswith(f"| {role} | {role} | 0 |"))
        assert row.split(" | ")[4].split(" [")[0] == _format("n_fg", summary["n_fg"]), role
    assert "| features.relu2 FSS |" in captured.out  # the UniCAM table, from kd_probe_unicam.pt
    assert "| CAM cosine |" in captured.out and "adversarial transfer, ε = 1/255" in captured.out  # agreement file


class _Gadget:
    """Unpickled, it would create ``marker`` (``open(marker, "w")``): what a hostile file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return open, (str(self.marker), "w")


def _seed_copy(runs: Path, role: str, seed: int) -> Path:
    copy = Path(shutil.copytree(runs / role, runs / f"{role}-s{seed}"))
    _set(copy / "kd_probe_run.json", run=copy.name, seed=seed)
    return copy


def test_a_malicious_pickle_is_refused_and_never_run(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    probe = tmp_path / "probe_of_the_gadget.pt"  # the gadget does work when loaded the unsafe way
    torch.save({"entries": [_Gadget(tmp_path / "works")]}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "works").exists()
    history = _seed_copy(runs, "distilled", 1) / "kd_probe_history.pt"
    unicam = _seed_copy(runs, "baseline", 1) / "kd_probe_unicam.pt"
    for path in (history, unicam):
        torch.save({"version": 1, "entries": [_Gadget(marker)]}, path)
    assert main(["report", str(runs), "--no-figures"]) == 0
    assert not marker.exists()
    left_out = _left_out(capsys.readouterr().err)
    assert len(left_out) == 2
    for path, line in zip((unicam, history), sorted(left_out), strict=True):  # baseline-s1 first
        assert f"{path} holds io.open, not only tensors and plain data; refused, not loaded." in line
    report = (runs / "report.md").read_text()
    assert str(history) in report.split("## Left out")[1].split("## ")[0] and str(unicam) in report
    assert "| distilled-s1 |" not in report and "| distilled | distilled | 0 |" in report


def test_a_history_path_outside_the_run_folder_is_refused(runs: Path, capsys: pytest.CaptureFixture) -> None:
    outside = runs.parent / "elsewhere.pt"
    shutil.copy(runs / "distilled" / "kd_probe_history.pt", outside)
    cases = {"relative": "../../elsewhere.pt", "absolute": str(outside)}
    for seed, (_, value) in enumerate(cases.items(), start=1):
        _set(_seed_copy(runs, "distilled", seed) / "kd_probe_summary.json", history_file=value)
    linked = _seed_copy(runs, "distilled", 3)
    (linked / "kd_probe_history.pt").unlink()
    (linked / "kd_probe_history.pt").symlink_to(outside)
    assert main(["report", str(runs), "--no-figures"]) == 0
    left_out = sorted(_left_out(capsys.readouterr().err))
    assert left_out == [
        f"kd-probe report: left out {runs / 'distilled-s1'}: {runs / 'distilled-s1' / 'kd_probe_summary.json'} "
        f"names the file '../../elsewhere.pt' outside the run folder {runs / 'distilled-s1'}; refused.",
        f"kd-probe report: left out {runs / 'distilled-s2'}: {runs / 'distilled-s2' / 'kd_probe_summary.json'} "
        f"names the file '{outside}' outside the run folder {runs / 'distilled-s2'}; refused.",
        f"kd-probe report: left out {runs / 'distilled-s3'}: {runs / 'distilled-s3' / 'kd_probe_summary.json'} "
        f"names the file 'kd_probe_history.pt' outside the run folder {runs / 'distilled-s3'}; refused.",
    ]


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _history(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        record = torch.load(path, weights_only=True)
        replaced = change(record)
        torch.save(record if replaced is None else replaced, path)

    return damage


def _events(path: Path) -> Path:
    (file,) = path.glob("events.out.tfevents.*")
    return file


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "history truncated": ("kd_probe_history.pt", _cut, "is damaged or not a torch file ("),
    "history empty": ("kd_probe_history.pt", lambda p: p.write_bytes(b""), "is damaged or not a torch file"),
    "history garbage": ("kd_probe_history.pt", lambda p: p.write_bytes(b"\x80\x02garbage"), "is damaged or not a"),
    "history a list": ("kd_probe_history.pt", lambda p: torch.save([1, 2], p), "holds a list; expected a dict."),
    "history no entries": (
        "kd_probe_history.pt",
        _history(lambda r: r.update(entries=None)),
        "has 'entries' of type NoneType; expected list.",
    ),
    "history wrong shapes": (
        "kd_probe_history.pt",
        _history(lambda r: r["entries"][-1].update(entropy=torch.zeros(2, 3, 3))),
        "has an entry that does not fit its masks (",
    ),
    "unicam truncated": ("kd_probe_unicam.pt", lambda p: _cut(p, 0.9), "is damaged or not a torch file"),
    "unicam text scores": (
        "kd_probe_unicam.pt",
        _history(lambda r: r["entries"][-1].update({"fss/features.relu2": "high"})),
        "has an entry whose scores are not numbers.",
    ),
    "unicam distances not square": (
        "kd_probe_unicam.pt",
        _history(lambda r: r["distances"]["layers"]["features.relu2"].update(student=torch.zeros(3, 4))),
        "has 'distances' that are not square float matrices of one size (",
    ),
    "agreement a list": ("kd_probe_agreement.pt", lambda p: torch.save([1], p), "holds a list; expected a dict."),
    "agreement per-image length": (
        "kd_probe_agreement.pt",
        _history(lambda r: r["entries"][-1]["per_image"].update(cam_cosine=torch.zeros(1))),
        "has per-image values that are not tensors of shape (",
    ),
    "summary truncated": ("kd_probe_summary.json", _cut, "is not readable JSON (JSONDecodeError: "),
    "summary a list": ("kd_probe_summary.json", lambda p: p.write_text("[1, 2]"), "holds a JSON list; expected"),
    "summary not text": ("kd_probe_summary.json", lambda p: p.write_bytes(b"\xff\xfe\x00"), "is not readable JSON"),
    "run file truncated": ("kd_probe_run.json", _cut, "is not readable JSON"),
    "run file seed text": ("kd_probe_run.json", lambda p: _set(p, seed="one"), "gives the seed 'one'; expected an"),
    "run file role": ("kd_probe_run.json", lambda p: _set(p, role="teacher"), "gives the role 'teacher'; expected"),
    "events truncated": ("events", lambda p: _cut(_events(p.parent), 0.97), "is truncated or corrupt after "),
    "events garbage": (
        "events",
        lambda p: _events(p.parent).write_bytes(b"not an event file at all"),
        "is truncated or corrupt after 0 sound records.",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_file_leaves_its_run_out_with_one_line(runs: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    name, damage, problem = DAMAGE[case]
    path = runs / "distilled" / name
    damage(path)
    named = _events(path.parent) if name == "events" else path
    assert main(["report", str(runs), "--no-figures"]) == 0
    captured = capsys.readouterr()
    (line,) = _left_out(captured.err)
    assert line.startswith(f"kd-probe report: left out {runs / 'distilled'}: {named} {problem}"), line
    report = (runs / "report.md").read_text()
    assert f"- {runs / 'distilled'}: {named} {problem}" in report.split("## Left out")[1]
    assert "| distilled | distilled |" not in report and "| baseline | baseline | 0 |" in report
    assert "- needs both distilled and baseline runs." in report


def test_no_usable_run_exits_2_naming_every_file(runs: Path, capsys: pytest.CaptureFixture) -> None:
    for role in ("distilled", "baseline"):
        _cut(runs / role / "kd_probe_history.pt")
    assert main(["report", str(runs)]) == 2
    err = capsys.readouterr().err
    left_out = _left_out(err)
    assert len(left_out) == 2
    for role, line in zip(("baseline", "distilled"), left_out, strict=True):  # find_runs sorts the folders
        assert line.startswith(f"kd-probe report: left out {runs / role}: {runs / role / 'kd_probe_history.pt'} is ")
    assert f"kd-probe report: no usable run in {runs}: every run was left out." in err
    assert not (runs / "report.md").exists()


def test_runs_of_different_protocols_are_refused(runs: Path, capsys: pytest.CaptureFixture) -> None:
    for role in ("distilled", "baseline"):
        _set(_seed_copy(runs, role, 1) / "kd_probe_run.json", protocol="paper")
    (_seed_copy(runs, "baseline", 2) / "kd_probe_run.json").unlink()
    assert main(["report", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kd-probe report: the runs have different protocols (hinton: {runs / 'baseline'}, {runs / 'distilled'}; "
        f"paper: {runs / 'baseline-s1'}, {runs / 'distilled-s1'}; not recorded: {runs / 'baseline-s2'}) and are "
        "never averaged together; report each group's runs on their own."
    )
    assert not (runs / "report.md").exists()
    assert main(["report", str(runs / "distilled-s1"), str(runs / "baseline-s1"), "--no-figures"]) == 0
    assert "protocol: paper; σ maps: faithful, λ = 7.0." in (runs / "distilled-s1" / "report.md").read_text()


def test_runs_of_different_sigma_methods_are_refused(runs: Path, capsys: pytest.CaptureFixture) -> None:
    summary_file = runs / "distilled" / "kd_probe_summary.json"
    summary = json.loads(summary_file.read_text())
    summary["settings"]["method"] = "secant"
    summary_file.write_text(json.dumps(summary))
    assert main(["report", str(runs)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kd-probe report: the runs have different σ methods (faithful: {runs / 'baseline'}; secant: "
        f"{runs / 'distilled'}), so they cannot be compared image by image; report each group's runs on their own, "
        "or pass --group-summaries to compare only the groups' summaries (no paired intervals, no verdicts)."
    )


def test_two_runs_with_one_role_and_seed_are_refused(runs: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(runs / "baseline", runs / "baseline-again")
    assert main(["report", str(runs)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"kd-probe report: two baseline runs have seed 0, {runs / 'baseline'} and {runs / 'baseline-again'}; each "
        "seed pairs one distilled with one baseline run, so report them separately."
    )


def test_report_and_figures_are_replaced_atomically(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replaced: list[tuple[Path, Path]] = []
    real = os.replace

    def record(source: str | Path, target: str | Path) -> None:
        assert Path(source).is_file() and Path(source).stat().st_size > 0
        replaced.append((Path(source), Path(target)))
        real(source, target)

    monkeypatch.setattr(os, "replace", record)
    out = runs / "out"
    write_report([runs], out)
    assert sorted(target.name for _, target in replaced) == ["curves.png", "maps.png", "report.md", "unicam.png"]
    assert all(source.parent == target.parent == out and source.name != target.name for source, target in replaced)
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "maps.png", "report.md", "unicam.png"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failed_write_leaves_the_old_report_whole(runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (runs / "report.md").write_text("the old report\n")

    def fail(source: str | Path, target: str | Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_report([runs], runs, figures=False)
    assert (runs / "report.md").read_text() == "the old report\n"
    assert not list(runs.glob(".*.tmp"))
