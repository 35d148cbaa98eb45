"""``kd-probe fit|validate|test``: Lightning's ``LightningCLI`` over kd_probe — a whole run from one YAML file.

The model is a :class:`CLIDistillationModule`: a ``DistillationModule`` whose ``student`` and ``teacher`` are
given by ``class_path`` (``kd_probe.models.VGG`` or any importable ``nn.Module``) with ``init_args``, and whose
teacher (or student) starts from the weights of a checkpoint file (``teacher_checkpoint``). The data is any
``LightningDataModule`` by ``class_path`` (default ``kd_probe.ShapesDataModule``); the probes go under
``trainer.callbacks``, their probe set written ``images: datamodule`` (the data module's probe split) or as the
path of a saved tensor file. ``kd-probe fit --print_config`` prints every option with its default.

Example::

    kd-probe fit --config examples/teacher.yaml          # writes runs/examples/checkpoints/teacher.ckpt
    kd-probe fit --config examples/hinton.yaml --trainer.max_epochs 3 --data.train_size 1000
    kd-probe test --config examples/hinton.yaml --ckpt_path runs/examples/distilled/checkpoints/*.ckpt
    kd-probe fit --print_config                          # every option, with its default
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from torch import nn
from typing_extensions import override

from kd_probe.apps.options import LIGHTNING_COMMANDS
from kd_probe.callbacks import KnowledgePointProbe
from kd_probe.core.sigma import estimate_sigma_maps
from kd_probe.models import load_weights
from kd_probe.modules import DistillationModule

__all__ = ["COMMANDS", "CLIDistillationModule", "ConfigurationError", "KDProbeCLI", "SaveFitConfig", "main"]

COMMANDS = LIGHTNING_COMMANDS
_SIGMA_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(estimate_sigma_maps).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


class ConfigurationError(Exception):
    """A mistake in a run's configuration found while building the run (before any training), in one sentence."""


class CLIDistillationModule(DistillationModule):
    """The ``DistillationModule`` that ``kd-probe fit`` builds: networks from ``class_path``, weights from files.

    Everything but two arguments is :class:`~kd_probe.DistillationModule`'s (``stage``, ``temperature``,
    ``feature_pairs``, ``optimizer``, ...); it trains, logs and checkpoints exactly as that class does.

    Args:
        student: the network to train (in YAML: ``class_path`` and ``init_args``).
        teacher: the network to learn from (``None``: the from-scratch baseline).
        teacher_checkpoint: a file with the teacher's weights, loaded into ``teacher`` before it is frozen: the
            checkpoint of the run that trained it (a ``DistillationModule``'s: its student's weights) or a
            ``state_dict`` file (:func:`kd_probe.models.load_weights`).
        student_checkpoint: the same for the student's starting weights, e.g. the mimic stage's checkpoint for
            the head stage of the two-phase protocol.
        options: the other ``DistillationModule`` arguments.

    Example::

        module = CLIDistillationModule(VGG(6), VGG(6, widths=(32, 64, 128)),
                                       teacher_checkpoint="runs/examples/checkpoints/teacher.ckpt")
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        teacher_checkpoint: str | None = None,
        student_checkpoint: str | None = None,
        **options: Any,
    ) -> None:
        if teacher_checkpoint is not None:
            if teacher is None:
                raise ValueError(
                    f"`teacher_checkpoint`={teacher_checkpoint!r} needs `teacher`: the network (class_path and "
                    "init_args) whose weights the file holds."
                )
            load_weights(teacher, teacher_checkpoint, argument="teacher_checkpoint")
        if student_checkpoint is not None:
            load_weights(student, student_checkpoint, argument="student_checkpoint")
        super().__init__(student, teacher, **options)
        # LightningCLI saves the parsed config as the hyperparameters (`num_classes: null` unless given): record the
        # resolved number of classes, as DistillationModule does, so that they merge with the data module's.
        self.save_hyperparameters({**self.hparams, "num_classes": self.train_acc.num_classes})


def _same(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def _instantiate_probe(class_type: type[KnowledgePointProbe], *args: Any, **kwargs: Any) -> KnowledgePointProbe:
    """Build a ``KnowledgePointProbe`` as Python code would: jsonargparse passes every σ option (its ``**kwargs``,
    found through ``estimate_sigma_maps``), so the options left at the engine's default are left out."""
    declared = inspect.signature(class_type.__init__).parameters
    kwargs = {
        key: value
        for key, value in kwargs.items()
        if key in declared or key not in _SIGMA_DEFAULTS or not _same(value, _SIGMA_DEFAULTS[key])
    }
    return class_type(*args, **kwargs)


class SaveFitConfig(SaveConfigCallback):
    """Lightning's ``SaveConfigCallback`` for ``fit`` only: ``config.yaml`` goes into the run folder of the training
    run, and ``kd-probe validate``/``test`` may log into that folder (``test/acc`` beside the probes, for the
    report) without refusing to overwrite it or writing one into the working directory."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class KDProbeCLI(LightningCLI):
    """``LightningCLI`` with kd_probe's defaults: the model is a :class:`CLIDistillationModule`, the data any
    ``LightningDataModule`` by ``class_path`` (default ``ShapesDataModule``, whose probe split the probes read with
    ``images: datamodule``), seed 0, and the module's own optimiser options (``model.optimizer``, ``model.lr``,
    ``model.schedule``) rather than Lightning's ``--optimizer`` group, and ``config.yaml`` saved by ``fit`` only
    (:class:`SaveFitConfig`). Configuration mistakes found while building the run raise :class:`ConfigurationError`."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            CLIDistillationModule,
            pl.LightningDataModule,
            save_config_callback=SaveFitConfig,
            subclass_mode_data=True,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "kd-probe", "description": "Train, validate or test a kd_probe run."},
            args=args,
            run=run,
        )

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in COMMANDS}

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {
                "data": {"class_path": "kd_probe.ShapesDataModule"},
                "model.student": {"class_path": "kd_probe.models.VGG", "init_args": {"num_classes": 6}},
            }
        )

    @override
    def before_instantiate_classes(self) -> None:
        self.parser.add_instantiator(_instantiate_probe, KnowledgePointProbe, subclasses=True)

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as error:  # kd_probe's one-sentence refusals of a setting
            cause: BaseException = error  # jsonargparse wraps a callback's refusal in its own union error
            while isinstance(cause.__cause__ or cause.__context__, (ValueError, FileNotFoundError)):
                cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
            raise ConfigurationError(str(cause)) from error


def main(argv: list[str] | None = None) -> int:
    """Run ``kd-probe fit|validate|test ARGS`` (``argv`` starts with the command; default ``sys.argv[1:]``) and
    return the exit status.

    A configuration mistake found while building the run (a missing checkpoint, a bad probe set, ...) is printed
    as one sentence with exit status 2; jsonargparse reports parsing mistakes and ``--help``/``--print_config``
    itself (``SystemExit``)."""
    try:
        KDProbeCLI(args=None if argv is None else list(argv))
    except ConfigurationError as error:
        given = sys.argv[1:] if argv is None else argv
        command = given[0] if given and given[0] in COMMANDS else "fit"
        print(f"kd-probe {command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
