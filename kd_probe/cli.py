"""The ``kd-probe`` command: ``kd-probe demo`` runs the main job; ``kd-probe report RUN_DIR...`` explains runs;
``kd-probe fit|validate|test --config run.yaml`` runs Lightning's ``LightningCLI`` over kd_probe
(:mod:`kd_probe.lightning_cli`)."""

from __future__ import annotations

import argparse
import sys

from kd_probe import __version__, lightning_cli
from kd_probe import report as report_app
from kd_probe.demo import add_arguments, report, run_demo

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments and arguments[0] in lightning_cli.COMMANDS:  # LightningCLI parses the rest itself
        return lightning_cli.main(argv)
    parser = argparse.ArgumentParser(prog="kd-probe", description="Explain knowledge distillation while it happens.")
    parser.add_argument("--version", action="version", version=f"kd_probe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_arguments(
        commands.add_parser(
            "demo",
            help="train a teacher, a distilled student and a from-scratch baseline on the built-in data",
            description="Train a teacher, a distilled student and a from-scratch baseline on the built-in data.",
        )
    )
    report_app.add_arguments(
        commands.add_parser(
            "report",
            help="write report.md for probed runs: metrics, the paper's hypotheses, figures",
            description="Write report.md for probed runs: metrics, the paper's hypotheses, figures.",
        )
    )
    for command, what in zip(lightning_cli.COMMANDS, ("train", "validate", "test"), strict=True):
        commands.add_parser(  # listed for --help; `main` hands these to LightningCLI before parsing
            command,
            add_help=False,
            help=f"{what} a run configured in YAML (LightningCLI): kd-probe {command} --config run.yaml; "
            f"kd-probe {command} --help lists every option",
        )
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "report":
        return report_app.run(args)
    try:
        result = run_demo(args)
    except FileExistsError as error:  # an earlier demo in OUT/EXPERIMENT, refused before any training
        print(f"kd-probe demo: {error}", file=sys.stderr)
        return 2
    report(result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
