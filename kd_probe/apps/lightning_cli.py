"""``kd-probe fit|validate|test``: Lightning's ``LightningCLI`` over kd_probe — a whole run from one YAML file.

The model is a :class:`CLIDistillationModule`: a ``DistillationModule`` whose ``student`` and ``teacher`` are
given by ``class_path`` (``kd_probe.models.VGG`` or any importable ``nn.Module``) with ``init_args``, and whose
teacher (or student) starts from the weights of a checkpoint file (``teacher_checkpoint``). The data is any
``LightningDataModule`` by ``class_path`` (default ``kd_probe.ShapesDataModule``); the probes go under
``trainer.callbacks``, their probe set written ``images: datamodule`` (the data module's probe split) or as the
path of a saved tensor file. ``kd-probe fit --print_config`` prints every option with its default.

YAML is read strictly: a key given twice in one mapping, more than ``MAX_ALIASES`` aliases, an expansion past
``MAX_NODES`` nodes or a recursive alias is refused in one sentence naming the line, before anything is built. A
mistake found while building the run's objects (a refused setting, a Trainer that cannot start) is one line on
stderr and exit status 2; errors raised while training are not caught.

Example::

    kd-probe fit --config examples/teacher.yaml          # writes runs/examples/checkpoints/teacher.ckpt
    kd-probe fit --config examples/hinton.yaml --trainer.max_epochs 3 --data.train_size 1000
    kd-probe test --config examples/hinton.yaml --ckpt_path runs/examples/distilled/checkpoints/*.ckpt
    kd-probe fit --print_config                          # every option, with its default
"""

from __future__ import annotations

import inspect
import os
import sys
from types import TracebackType
from typing import Any, NoReturn

import lightning.pytorch as pl
import yaml
from jsonargparse import get_loader, set_loader
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from torch import nn
from typing_extensions import override

from kd_probe.apps.options import LIGHTNING_COMMANDS
from kd_probe.callbacks import KnowledgePointProbe
from kd_probe.core.sigma import estimate_sigma_maps
from kd_probe.models import load_weights
from kd_probe.modules import DistillationModule

__all__ = [
    "COMMANDS",
    "MAX_ALIASES",
    "MAX_NODES",
    "CLIDistillationModule",
    "ConfigurationError",
    "KDProbeCLI",
    "SaveFitConfig",
    "main",
    "refusal",
]

COMMANDS = LIGHTNING_COMMANDS
MAX_ALIASES = 1_000  # aliases (``*name``) in one YAML document
MAX_NODES = 100_000  # nodes of one YAML document once every alias is expanded (a run's config has a few hundred)
PARSER_MODE = "kd_probe_yaml"  # jsonargparse's YAML loader behind the strict checks below
_SIGMA_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(estimate_sigma_maps).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}


class ConfigurationError(Exception):
    """A mistake in a run's configuration found while building the run (before any training), in one sentence."""


class _Composer(yaml.SafeLoader):
    """PyYAML's pure-Python composer, counting aliases as it meets them: the node graph keeps each alias as a
    reference to its anchor's node, so composing is cheap whatever the document would expand to."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise ConfigurationError(f"line {line}: more than {MAX_ALIASES} YAML aliases (*name) in one document.")
        return super().compose_node(parent, index)  # type: ignore[no-untyped-call]


def _check_node(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """The number of nodes under ``node`` once aliases are expanded (memoised per node, so a shared node is
    counted without expanding it); refuses duplicate keys, recursive aliases and sizes over ``MAX_NODES``."""
    if id(node) in sizes:
        return sizes[id(node)]
    line = node.start_mark.line + 1
    if id(node) in open_nodes:
        raise ConfigurationError(f"line {line}: a YAML alias refers to a node that contains it (a recursive alias).")
    open_nodes.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                first = seen.setdefault((key.tag, key.value), key.start_mark.line + 1)
                if first != key.start_mark.line + 1:
                    raise ConfigurationError(
                        f"line {key.start_mark.line + 1}: the key {key.value!r} is given twice in one mapping (first "
                        f"on line {first}); give each key once."
                    )
            children += (key, value)
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    size = 1 + sum(_check_node(child, sizes, open_nodes) for child in children)
    if size > MAX_NODES:
        raise ConfigurationError(
            f"line {line}: this YAML expands to more than {MAX_NODES} nodes once its aliases (*name) are expanded."
        )
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


_jsonargparse_yaml_load = get_loader("yaml")


def _load_yaml(text: str, path: str | os.PathLike[str] = "") -> Any:
    """jsonargparse's YAML loader, after refusing duplicate keys and alias bombs (:class:`ConfigurationError`,
    naming ``path`` and the line)."""
    try:
        composer = _Composer(text)
        try:
            node = composer.get_single_node()
            if node is not None:
                _check_node(node, {}, set())
        finally:
            composer.dispose()
    except ConfigurationError as error:
        raise ConfigurationError(f"{os.fspath(path) or 'a YAML value'}: {error}") from None
    except RecursionError:
        raise ConfigurationError(f"{os.fspath(path) or 'a YAML value'}: the YAML nests too deeply to read.") from None
    return _jsonargparse_yaml_load(text)


set_loader(PARSER_MODE, _load_yaml, exceptions=(yaml.YAMLError,))


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


class _Parser(LightningArgumentParser):
    """``LightningArgumentParser`` whose final report of a parsing mistake (an unknown option, a ``class_path``
    that does not import, a value of the wrong type) is a :class:`ConfigurationError`: one line, exit status 2."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # jsonargparse is trying alternatives: it catches the ArgumentError
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        raise ConfigurationError(f"{' '.join(message.split())} ({prog} --help lists the options)") from ex


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
            parser_class=_Parser,
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
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("parser_mode", PARSER_MODE)  # the main parser and each command's: config files and values
        return super().init_parser(**kwargs)

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
        except Exception as error:  # a class refused its settings, or the Trainer cannot start as configured
            raise refusal(error) from error


def refusal(error: Exception) -> ConfigurationError:
    """What a class refused while jsonargparse built it, as one sentence: jsonargparse wraps the class's own
    error (a callback's in its union error), which is unwrapped; an error other than kd_probe's refusals
    (``ValueError``, ``FileNotFoundError``) is named with its type."""
    cause: BaseException = error
    while _raised_by_jsonargparse(cause.__traceback__) and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    message = " ".join(str(cause).split()) or type(cause).__name__
    if not isinstance(cause, (ValueError, FileNotFoundError)):  # not one of kd_probe's refusals: say what
        message = f"{type(cause).__name__}: {message}"
    return ConfigurationError(message)


def _raised_by_jsonargparse(traceback: TracebackType | None) -> bool:
    """Whether the innermost frame of ``traceback`` is jsonargparse's (it re-raises what a class refused)."""
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback is not None and traceback.tb_frame.f_globals.get("__name__", "").startswith("jsonargparse")


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
