"""DistillationModule: logit KD, feature KD, the two-phase protocol of [KP] and the no-teacher baseline."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from kd_probe.core.adapters import RESIZE_MODES, build_adapter
from kd_probe.core.batches import unpack_batch
from kd_probe.core.layers import modules_through, output_shapes, resolve_layer, run_capturing
from kd_probe.core.losses import feature_distillation_loss, logit_distillation_loss
from kd_probe.losses._base import DistillationLoss
from kd_probe.modules._checks import check_stage_options, dry_run, example_batch
from kd_probe.modules._losses import (
    batch_indices,
    build_losses,
    check_losses,
    loss_terms,
    run_for_losses,
    student_layers,
    teacher_layers,
    weighted_total,
)
from kd_probe.modules._optim import OptimizerOptions

__all__ = ["DistillationModule"]

STAGES = ("distill", "mimic", "head")
_EVAL_MODE_WARNING = "Found {} module(s) in eval mode at the start of training."


class DistillationModule(pl.LightningModule):
    """Knowledge distillation from a frozen ``teacher`` into ``student``, or the baseline without one.

    Losses, by ``stage``:

    - ``"distill"`` with a teacher: ``ce_weight·CE(s, y) + kd_weight·T²·KL(softmax(t/T) ‖ softmax(s/T))
      + feature_weight·Σ MSE(adapter(f_s), f_t)`` over ``feature_pairs`` (Hinton KD plus hint KD).
    - ``"distill"`` with ``teacher=None``: plain ``CE(s, y)``, with the same optimiser and schedule, so
      a baseline run differs from a distilled run only in the teacher.
    - ``"mimic"`` (phase 1 of the knowledge-point protocol, methods §1.7): only ``MSE(f_s, f_t)`` at the one
      layer pair of ``feature_pairs`` (name the module whose output is pre-ReLU), no labels.
    - ``"head"`` (phase 2): every student module up to and including ``freeze_through`` is frozen
      (``requires_grad=False`` and kept in eval mode); the rest trains with ``CE(s, y)``.
      :func:`kd_probe.run_two_phase` runs both phases.

    Teacher hygiene: its parameters are frozen, it is kept in eval mode whatever Lightning toggles, its
    forward runs under ``no_grad``, and it is left out of ``state_dict()`` and so out of checkpoints
    (``checkpoint_teacher=True`` keeps it); a state dict without teacher keys loads strictly. Lightning's
    "modules in eval mode at the start of training" warning is silenced when the teacher and frozen
    modules are the only modules in eval mode.

    Adapters (1×1 conv for maps, linear for vectors, none when shapes match) are built from one dry
    forward of ``example_input`` at construction, or, without it, of one training batch in
    :meth:`setup`. They train with the student and are saved with it. The same dry forward finds the
    modules to freeze in the ``"head"`` stage.

    Args:
        student: the network to train.
        teacher: the frozen network to learn from; ``None`` for the from-scratch baseline.
        stage: ``"distill"``, ``"mimic"`` or ``"head"``.
        temperature: softening temperature ``T`` of logit KD.
        kd_weight: weight of the logit KD term.
        ce_weight: weight of the cross-entropy term (with a teacher).
        feature_pairs: ``{student layer: teacher layer}`` dotted module names (relative to the student and
            the teacher) whose outputs are matched with MSE; a string means the same name in both.
        feature_weight: weight of the feature term in ``"distill"``.
        feature_resize: how a student feature map of another height and width is matched to the teacher's
            before the 1×1 projection: ``"pool"`` (adaptive average pooling), ``"interpolate"`` (bilinear) or
            ``None`` (refuse, naming both shapes).
        freeze_through: the student layer up to which modules are frozen in ``"head"``.
        example_input: a batch of inputs (or an input shape without the batch dimension) for the dry forward.
        num_classes: classes, for accuracy; by default the ``out_features`` of the student's last ``nn.Linear``.
        optimizer: ``"sgd"`` (with momentum) or ``"adamw"``.
        lr, momentum, weight_decay: optimiser settings.
        schedule: ``"cosine"``, ``"step"`` (``gamma`` at the ``milestones``, fractions of training) or ``None``;
            stepped every optimiser step over ``trainer.estimated_stepping_batches``.
        checkpoint_teacher: keep the teacher's weights in ``state_dict()``/checkpoints.
        losses: methods of :mod:`kd_probe.losses` (``[DKD(), AT(student_layers=...)]``), each weighted by its
            ``weight``; with them the objective is ``ce_weight·CE + Σ weight·L`` and replaces the logit KD and
            feature terms above (``temperature``, ``kd_weight`` and ``feature_pairs`` are their shorthand).
            Their learnable parts are built from the dry forward, train with the student and are saved with it.

    Logged metrics (``<split>`` is ``train``, ``val`` or ``test``; train losses per step, the rest per epoch):
        ``<split>/loss`` (the total objective), ``<split>/loss_ce``, ``<split>/loss_kd``,
        ``<split>/loss_feature`` (each where the stage uses it), ``<split>/loss_<method>`` (each of ``losses``, e.g.
        ``loss_dkd``), ``<split>/acc`` (top-1, not in ``"mimic"``).

    Example::

        >>> from kd_probe.models import VGG, ResNet
        >>> teacher, student = ResNet(num_classes=6), VGG(num_classes=6)
        >>> module = DistillationModule(student, teacher, temperature=4.0, kd_weight=0.9, ce_weight=0.1)
        >>> baseline = DistillationModule(VGG(num_classes=6))  # the same recipe without a teacher
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        stage: str = "distill",
        temperature: float = 4.0,
        kd_weight: float = 0.9,
        ce_weight: float = 0.1,
        feature_pairs: Mapping[str, str] | str | None = None,
        feature_weight: float = 1.0,
        feature_resize: str | None = None,
        freeze_through: str | None = None,
        example_input: Tensor | Sequence[int] | None = None,
        num_classes: int | None = None,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        schedule: str | None = "cosine",
        milestones: Sequence[float] = (0.5, 0.75),
        gamma: float = 0.1,
        checkpoint_teacher: bool = False,
        losses: Sequence[DistillationLoss] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(student, nn.Module):
            raise ValueError(f"`student` must be an nn.Module, got {type(student).__name__}.")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ValueError(f"`teacher` must be an nn.Module or None, got {type(teacher).__name__}.")
        if stage not in STAGES:
            raise ValueError(f"`stage` must be one of {STAGES}, got {stage!r}.")
        if feature_pairs is not None and not isinstance(feature_pairs, (str, Mapping)):
            raise ValueError(
                f"`feature_pairs` must be a layer name or a {{student layer: teacher layer}} mapping, got {feature_pairs!r}."
            )
        if not isinstance(checkpoint_teacher, bool):
            raise ValueError(f"`checkpoint_teacher` must be True or False, got {checkpoint_teacher!r}.")
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
        ):
            raise ValueError(
                f"`num_classes` must be an integer ≥ 1 (or None to read it from the student), got {num_classes!r}."
            )
        if feature_resize not in (None, *RESIZE_MODES):
            raise ValueError(f"`feature_resize` must be one of {RESIZE_MODES} or None, got {feature_resize!r}.")
        if isinstance(feature_pairs, str):
            feature_pairs = {feature_pairs: feature_pairs}
        pairs = dict(feature_pairs or {})
        check_stage_options(stage, teacher, pairs, freeze_through, temperature, kd_weight, ce_weight, feature_weight)
        methods = check_losses(losses, teacher, stage)
        if methods and pairs:
            raise ValueError(
                "`feature_pairs` and `losses` both set feature terms; give the feature method in `losses`."
            )
        milestones = (
            tuple(milestones) if isinstance(milestones, Sequence) and not isinstance(milestones, str) else milestones
        )
        self._optimizer_options = OptimizerOptions(optimizer, lr, momentum, weight_decay, schedule, milestones, gamma)
        for name, teacher_name in pairs.items():
            resolve_layer(student, name, argument="feature_pairs")
            resolve_layer(teacher, teacher_name, argument="feature_pairs")  # type: ignore[arg-type]
        if freeze_through is not None:
            resolve_layer(student, freeze_through, argument="freeze_through")
        num_classes = num_classes or _last_linear_out_features(student)
        if num_classes is None:
            raise ValueError(
                "`num_classes` is needed: the student has no nn.Linear to read the number of classes from."
            )
        feature_pairs = pairs  # hyperparameters record the resolved values (they merge with a datamodule's in loggers)
        self.save_hyperparameters(ignore=["student", "teacher", "example_input", "losses"])
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.stage, self.feature_pairs = stage, pairs
        self.adapters = nn.ModuleDict()
        self.losses = nn.ModuleList(methods)
        self.frozen_modules: list[str] = []  # student module names frozen by the "head" stage
        self._frozen: list[nn.Module] = []
        self._prepared = not pairs and stage != "head" and not methods
        self._warning_filter: tuple | None = None
        self.register_load_state_dict_post_hook(self._ignore_missing_teacher_keys)

        self.train_acc, self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes, average="micro") for _ in range(3)
        )
        if example_input is not None:
            self.prepare(example_input)

    # ------------------------------------------------------------------ dry forward: adapters, freezing
    def prepare(self, example_input: Tensor | Sequence[int]) -> None:
        """Build the feature adapters and freeze the ``"head"`` stage's modules from one dry forward.

        Called by the constructor when ``example_input`` is given, else by :meth:`setup`. Call it
        yourself before ``load_state_dict`` when the module was built without ``example_input``.
        ``example_input`` is a batch of inputs or an input shape without the batch dimension.
        """
        if self._prepared:
            return
        given = example_input
        example_input = example_batch(example_input)
        if self.feature_pairs:
            student_shapes = dry_run(output_shapes, self.student, list(self.feature_pairs), example_input, given)
            teacher_shapes = dry_run(
                output_shapes, self.teacher, list(self.feature_pairs.values()), example_input, given
            )
            for name, teacher_name in self.feature_pairs.items():
                adapter = build_adapter(
                    student_shapes[name],
                    teacher_shapes[teacher_name],
                    pair=f"{name!r} -> {teacher_name!r}",
                    resize=self.hparams.get("feature_resize"),
                )
                if adapter is not None:
                    self.adapters[_adapter_key(name)] = adapter.to(example_input.device)
        if len(self.losses):
            dry_run(
                lambda s, t, x: build_losses(self.losses, s, t, x), self.student, self.teacher, example_input, given
            )  # type: ignore[arg-type]
        if self.stage == "head":
            self.frozen_modules = dry_run(
                modules_through, self.student, self.hparams["freeze_through"], example_input, given
            )
            self._frozen = [resolve_layer(self.student, name) for name in self.frozen_modules]
            for module in self._frozen:
                module.requires_grad_(False)
            self._enforce_frozen_modes()
        self.example_input_array = example_input
        self._prepared = True

    @override
    def setup(self, stage: str) -> None:
        if self._prepared:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise ValueError(
                "DistillationModule needs `example_input` (a batch of inputs or an input shape) to build feature "
                "adapters or find the modules to freeze, when the Trainer is not given a datamodule."
            )
        for loss in self.losses:  # CRD's memory bank: one row per training sample
            if getattr(loss, "num_samples", 0) is None:
                setattr(loss, "num_samples", len(datamodule.train_dataloader().dataset))  # noqa: B010
        loader = {"validate": "val_dataloader", "test": "test_dataloader", "predict": "predict_dataloader"}
        inputs, _ = unpack_batch(next(iter(getattr(datamodule, loader.get(stage, "train_dataloader"))())))
        self.prepare(inputs)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if isinstance(self.example_input_array, Tensor):
            checkpoint["kd_probe_input_shape"] = tuple(self.example_input_array.shape[1:])

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A module built without example_input learns its adapters/frozen modules from the saved input shape.
        if not self._prepared and "kd_probe_input_shape" in checkpoint:
            self.prepare(checkpoint["kd_probe_input_shape"])

    # ------------------------------------------------------------------ teacher and frozen modules
    def _enforce_frozen_modes(self) -> None:
        teacher = getattr(self, "teacher", None)
        if teacher is not None:
            teacher.eval()
        for module in getattr(self, "_frozen", ()):
            module.eval()

    @override
    def train(self, mode: bool = True) -> DistillationModule:
        super().train(mode)
        self._enforce_frozen_modes()
        return self

    @override
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        if self.teacher is not None and not self.hparams["checkpoint_teacher"]:
            for key in [k for k in state if k.startswith(prefix + "teacher.")]:
                del state[key]
        return state

    def _ignore_missing_teacher_keys(self, module: nn.Module, incompatible: Any) -> None:
        """Load-state-dict post hook: a state dict saved without the teacher still loads strictly."""
        if self.teacher is None:
            return
        teacher_keys = {f"teacher.{k}" for k in self.teacher.state_dict()}
        incompatible.missing_keys[:] = [
            k for k in incompatible.missing_keys if not any(k == t or k.endswith("." + t) for t in teacher_keys)
        ]

    @override
    def on_fit_start(self) -> None:
        # Silence Lightning's eval-mode warning only when the eval-mode modules are exactly ours.
        frozen = {f"student.{name}" for name in self.frozen_modules}
        in_eval = [n for n, m in self.named_modules() if not m.training]
        if in_eval and all(n == "teacher" or n.startswith("teacher.") or n in frozen for n in in_eval):
            warnings.filterwarnings("ignore", message=re.escape(_EVAL_MODE_WARNING.format(len(in_eval))))
            self._warning_filter = warnings.filters[0]

    @override
    def on_train_start(self) -> None:
        self._remove_warning_filter()  # Lightning warns just before this hook

    @override
    def teardown(self, stage: str) -> None:
        self._remove_warning_filter()  # also when fit failed before training started

    def _remove_warning_filter(self) -> None:
        if self._warning_filter is not None and self._warning_filter in warnings.filters:
            warnings.filters.remove(self._warning_filter)  # type: ignore[attr-defined]
        self._warning_filter = None

    # ------------------------------------------------------------------ steps
    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)

    def compute_losses(
        self, inputs: Tensor, labels: Tensor, indices: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits and the loss terms of the current stage (``loss`` is their weighted sum)."""
        hp: Any = self.hparams
        self._enforce_frozen_modes()  # Lightning may have toggled modes: the teacher and frozen modules stay in eval
        if len(self.losses):
            return self._method_losses(inputs, labels, indices)
        logits, student_features = run_capturing(
            self.student, list(self.feature_pairs), inputs, argument="feature_pairs"
        )
        terms: dict[str, Tensor] = {}
        if self.teacher is not None and self.stage != "head":
            with torch.no_grad():
                teacher_logits, teacher_features = run_capturing(
                    self.teacher, list(self.feature_pairs.values()), inputs, argument="feature_pairs"
                )
            if self.stage == "distill":
                terms["loss_kd"] = logit_distillation_loss(logits, teacher_logits, hp.temperature)
            if self.feature_pairs:
                terms["loss_feature"] = sum(
                    feature_distillation_loss(self._adapt(name, student_features[name]), teacher_features[t_name])
                    for name, t_name in self.feature_pairs.items()
                )  # type: ignore[assignment]
        if self.stage != "mimic":
            terms["loss_ce"] = F.cross_entropy(logits, labels)
        if self.stage == "distill" and self.teacher is not None:
            weights = {"loss_ce": hp.ce_weight, "loss_kd": hp.kd_weight, "loss_feature": hp.feature_weight}
            terms["loss"] = sum(weights[k] * v for k, v in terms.items())  # type: ignore[assignment]
        else:  # baseline and "head": cross-entropy alone; "mimic": the feature MSE alone
            terms["loss"] = terms["loss_feature"] if self.stage == "mimic" else terms["loss_ce"]
        return logits, terms

    def _method_losses(
        self, inputs: Tensor, labels: Tensor, indices: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``ce_weight·CE + Σ weight·L`` over :attr:`losses` (methods §6.3)."""
        logits, student_features = run_for_losses(self.student, student_layers(self.losses), inputs)
        with torch.no_grad():
            teacher_logits, teacher_features = run_for_losses(self.teacher, teacher_layers(self.losses), inputs)  # type: ignore[arg-type]
        terms = {"loss_ce": F.cross_entropy(logits, labels)}
        epoch = self.current_epoch + 1 if self._trainer is not None and self.training else None
        features = (student_features, teacher_features)
        methods = loss_terms(self.losses, logits, teacher_logits, *features, labels, indices, epoch)
        total = weighted_total(self.losses, self.hparams["ce_weight"], {**terms, **methods})
        return logits, {**terms, **methods, "loss": total}

    def _adapt(self, name: str, feature: Tensor) -> Tensor:
        key = _adapter_key(name)
        return self.adapters[key](feature) if key in self.adapters else feature

    def _shared_step(self, batch: Any, split: str) -> Tensor:
        inputs, labels = unpack_batch(batch)
        on_step = split == "train"
        needs = on_step and any(loss.needs_indices for loss in self.losses)
        logits, terms = self.compute_losses(inputs, labels, batch_indices(batch, len(labels)) if needs else None)
        for name, value in terms.items():
            self.log(
                f"{split}/{name}",
                value.detach(),
                on_step=on_step,
                on_epoch=not on_step,
                prog_bar=name == "loss" and split == "train",
                batch_size=len(labels),
                sync_dist=not on_step,  # under DDP an epoch's validation or test loss is the mean over the ranks
            )
        if self.stage != "mimic":
            accuracy = getattr(self, f"{split}_acc")
            accuracy(logits.detach(), labels)
            self.log(
                f"{split}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=split != "test", batch_size=len(labels)
            )
        return terms["loss"]

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def configure_optimizers(self) -> Any:
        owned = [*self.student.parameters(), *self.adapters.parameters(), *self.losses.parameters()]
        parameters = [p for p in owned if p.requires_grad]
        return self._optimizer_options.build(parameters, self.trainer.estimated_stepping_batches)


def _adapter_key(layer: str) -> str:
    return layer.replace(".", "__")


def _last_linear_out_features(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None
