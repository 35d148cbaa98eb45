"""The ``kd-probe`` command: ``kd-probe demo`` runs the main job; ``kd-probe report RUN_DIR...`` explains runs;
``kd-probe fit|validate|test --config run.yaml`` runs Lightning's ``LightningCLI`` over kd_probe
(:mod:`kd_probe.apps.lightning_cli`); ``kd-probe probe --config probe.yaml`` probes a run trained anywhere from
its checkpoints (:mod:`kd_probe.apps.probe_runs`).

Only the options are imported at start (:mod:`kd_probe.apps.options`): torch, Lightning, the demo and the report
are imported for the command that runs, so ``--help`` and a mistyped option answer at once.
"""

from __future__ import annotations

import sys

from kd_probe import __version__
from kd_probe.apps.options import (
    LIGHTNING_COMMANDS,
    Parser,
    add_demo_arguments,
    add_report_arguments,
    check_demo_arguments,
)

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments and arguments[0] in LIGHTNING_COMMANDS:  # LightningCLI parses the rest itself
        from kd_probe.apps import lightning_cli

        return lightning_cli.main(argv)
    if arguments and arguments[0] == "probe":  # jsonargparse parses the rest itself
        from kd_probe.apps import probe_runs

        return probe_runs.main(arguments[1:])
    parser = Parser(prog="kd-probe", description="Explain knowledge distillation while it happens.")
    parser.add_argument("--version", action="version", version=f"kd_probe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = add_demo_arguments(
        commands.add_parser(
            "demo",
            help="train a teacher, a distilled student and a from-scratch baseline on the built-in data",
            description="Train a teacher, a distilled student and a from-scratch baseline on the built-in data.",
        )
    )
    add_report_arguments(
        commands.add_parser(
            "report",
            help="write report.md for probed runs: metrics, the paper's hypotheses, figures",
            description="Write report.md for probed runs: metrics, the paper's hypotheses, figures.",
        )
    )
    for command, what in zip(LIGHTNING_COMMANDS, ("train", "validate", "test"), strict=True):
        commands.add_parser(  # listed for --help; `main` hands these to LightningCLI before parsing
            command,
            add_help=False,
            help=f"{what} a run configured in YAML (LightningCLI): kd-probe {command} --config run.yaml; "
            f"kd-probe {command} --help lists every option",
        )
    commands.add_parser(  # listed for --help; `main` hands it to kd_probe.apps.probe_runs before parsing
        "probe",
        add_help=False,
        help="probe a run trained anywhere from its saved checkpoints: kd-probe probe --config probe.yaml; "
        "kd-probe probe --help lists every option",
    )
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "report":
        from kd_probe.apps.report import write as report_app

        return report_app.run(args)
    try:
        check_demo_arguments(args)
    except ValueError as error:
        demo.error(str(error))
    from kd_probe.apps.demo.plan import accelerator
    from kd_probe.apps.demo.run import report, run_demo

    try:
        accelerator(args)  # needs torch: checked once it is imported
    except ValueError as error:
        demo.error(str(error))

    try:
        result = run_demo(args)
    except FileExistsError as error:  # an earlier demo in OUT/EXPERIMENT, refused before any training
        print(f"kd-probe demo: {error}", file=sys.stderr)
        return 2
    report(result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
