"""``kd-probe fit`` reads YAML strictly (duplicate keys, alias bombs) and reports a mistake found while parsing or
while building the run's objects as one line with exit status 2, never a traceback."""

import sys
import time
from pathlib import Path

import pytest

from kd_probe.apps import cli
from kd_probe.apps.lightning_cli import MAX_NODES, main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
        *(f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)),
    ]
)
MANY_ALIASES = "anchor: &x 1\nlist: [" + ", ".join(["*x"] * 1001) + "]\n"


@pytest.fixture(autouse=True)
def _command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["kd-probe"])  # LightningCLI warns when pytest's own arguments are there too
    monkeypatch.chdir(tmp_path)  # nothing is written, and a relative path is read from here


@pytest.mark.parametrize(
    ("config", "options", "expected"),
    [
        pytest.param(
            "model:\n  temperature: 2.0\n  stage: distill\n  temperature: 3.0\n",
            [],
            "run.yaml: line 4: the key 'temperature' is given twice in one mapping (first on line 2); give each "
            "key once.",
            id="duplicate key",
        ),
        pytest.param(
            BILLION_LAUGHS,
            [],
            f"run.yaml: line 6: this YAML expands to more than {MAX_NODES} nodes once its aliases (*name) are "
            "expanded.",
            id="alias bomb",
        ),
        pytest.param(
            MANY_ALIASES, [], "run.yaml: line 2: more than 1000 YAML aliases (*name) in one document.", id="aliases"
        ),
        pytest.param(
            "model:\n  feature_pairs: &pairs [*pairs]\n",
            [],
            "run.yaml: line 2: a YAML alias refers to a node that contains it (a recursive alias).",
            id="recursive alias",
        ),
        pytest.param(
            "model:\n  student:\n    class_path: kd_probe.models.NoSuchNet\n",
            [],
            "Parser key \"model.student\": Problem with given class_path 'kd_probe.models.NoSuchNet': module "
            "'kd_probe.models' has no attribute 'NoSuchNet' (kd-probe fit --help lists the options)",
            id="bad class_path",
        ),
        pytest.param(
            "model:\n  temperature: -1.0\n", [], "`temperature` must be > 0, got -1.0.", id="bad value in a class"
        ),
        pytest.param(
            "trainer:\n  devices: 0\n",
            [],
            "MisconfigurationException: `Trainer(devices=0)` value is not a valid input",
            id="Trainer refuses",
        ),
    ],
)
def test_a_mistake_is_one_line_and_exit_status_2(
    capsys: pytest.CaptureFixture[str], config: str, options: list[str], expected: str
) -> None:
    Path("run.yaml").write_text(config, encoding="utf-8")
    started = time.perf_counter()
    assert main(["fit", "--config", "run.yaml", *options]) == 2
    assert time.perf_counter() - started < 2.0 or "NoSuchNet" not in config  # refused before anything is built
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kd-probe fit")]
    assert len(error) == 1 and error[0].startswith(f"kd-probe fit: error: {expected}"), error
    assert not Path("runs").exists() and not Path("lightning_logs").exists()


def test_the_alias_bomb_fails_fast(capsys: pytest.CaptureFixture[str]) -> None:
    Path("bomb.yaml").write_text(BILLION_LAUGHS, encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])  # imports and parser built once: time only the refusal
    capsys.readouterr()
    started = time.perf_counter()
    assert main(["fit", "--config", "bomb.yaml", "--print_config"]) == 2
    assert time.perf_counter() - started < 2.0
    assert "expands to more than" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(path.name for path in EXAMPLES.glob("*.yaml")))
def test_every_example_passes_the_strict_reading(capsys: pytest.CaptureFixture[str], config: str) -> None:
    command = "probe" if config.startswith("probe_") else "fit"  # a `kd-probe probe` config, or a run's
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--config", str(EXAMPLES / config), "--print_config"])
    assert exit_.value.code == 0
    assert "class_path: kd_probe." in capsys.readouterr().out
