"""``DistillationModule(losses=[...])``: the features each method needs, building its learnable parts, its terms.

A loss of :mod:`kd_probe.losses` names its student and teacher layers (dotted module names), or takes the
*embedding* (``layers=None``): the input of each network's last ``nn.Linear``, flattened per sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn

from kd_probe.core.layers import run_capturing, uncompiled
from kd_probe.losses._base import DistillationLoss

__all__ = [
    "EMBEDDING",
    "batch_indices",
    "build_losses",
    "check_losses",
    "loss_terms",
    "run_for_losses",
    "student_layers",
    "teacher_layers",
    "term_name",
    "weighted_total",
]

EMBEDDING = "<embedding>"  # the input of a network's last nn.Linear
Losses = Sequence[DistillationLoss] | nn.ModuleList  # a DistillationModule holds them in a ModuleList


def check_losses(losses: object, teacher: nn.Module | None, stage: str) -> list[DistillationLoss]:
    """``losses`` as a list of :class:`DistillationLoss`, each once; one sentence for anything else."""
    if losses is None:
        return []
    if isinstance(losses, DistillationLoss) or not isinstance(losses, Sequence) or isinstance(losses, str):
        raise ValueError(f"`losses` must be a list of kd_probe.losses methods, got {type(losses).__name__}.")
    found = list(losses)
    wrong = [type(loss).__name__ for loss in found if not isinstance(loss, DistillationLoss)]
    if wrong:
        raise ValueError(f"`losses` must hold kd_probe.losses methods (DistillationLoss), got {wrong}.")
    if len({id(loss) for loss in found}) != len(found):
        raise ValueError("`losses` holds the same loss object twice; give each method once (or two instances).")
    names = [term_name(loss) for loss in found]
    if len(set(names)) != len(names):
        raise ValueError(f"`losses` holds two methods of one kind {names}; combine them into one, or weight it.")
    if found and teacher is None:
        raise ValueError(f"`losses`={names} need a teacher, got teacher=None.")
    if found and stage != "distill":
        raise ValueError(f"`losses` are used with stage='distill', got stage={stage!r}.")
    return found


def _methods(losses: Losses) -> list[DistillationLoss]:
    return [cast(DistillationLoss, loss) for loss in losses]


def term_name(loss: DistillationLoss) -> str:
    """The logged name of a method's term: ``loss_`` and the class name in lower case (``loss_dkd``)."""
    return f"loss_{type(loss).__name__.lower()}"


def _layers(losses: Losses, side: str) -> list[str]:
    names: list[str] = []
    for loss in _methods(losses):
        if loss.kind == "logit":
            continue
        layers = getattr(loss, f"{side}_layers") or (EMBEDDING,)
        names += [name for name in layers if name not in names]
    return names


def _last_linear(network: nn.Module) -> nn.Linear:
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"a loss without layers takes the embedding, the input of the last nn.Linear, but the "
            f"{type(network).__name__} has no nn.Linear; name its `student_layers`/`teacher_layers`."
        )
    return linears[-1]


@contextmanager
def _embedding(network: nn.Module, wanted: bool) -> Iterator[dict[str, Tensor]]:
    found: dict[str, Tensor] = {}
    if not wanted:
        yield found
        return

    def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
        found[EMBEDDING] = inputs[0].flatten(1)

    handle = _last_linear(network).register_forward_pre_hook(hook)
    try:
        yield found
    finally:
        handle.remove()


def run_for_losses(network: nn.Module, layers: Sequence[str], inputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """``network(inputs)`` and the features ``layers`` name (:data:`EMBEDDING`: the last Linear's input)."""
    named = [name for name in layers if name != EMBEDDING]
    with _embedding(network, EMBEDDING in layers) as embedding:
        logits, features = run_capturing(network, named, inputs, argument="losses")
    if EMBEDDING in layers and EMBEDDING not in embedding:
        raise ValueError(
            f"the embedding of the {type(network).__name__} was not found: its last nn.Linear did not run."
        )
    return logits, {**features, **embedding}


def _pick(loss: DistillationLoss, side: str, features: Mapping[str, Tensor]) -> list[Tensor]:
    return [features[name] for name in (getattr(loss, f"{side}_layers") or (EMBEDDING,))]


def build_losses(losses: Losses, student: nn.Module, teacher: nn.Module, example_input: Tensor) -> None:
    """Build every method's learnable parts from one dry forward of ``example_input`` through both networks
    (in eval mode, without gradients; the networks' modes are restored)."""
    if not any(loss.kind != "logit" for loss in _methods(losses)):
        for loss in _methods(losses):
            loss.built = True
        return
    features = []
    for network, side in ((student, "student"), (teacher, "teacher")):
        was_training = [m.training for m in network.modules()]
        network.eval()
        try:
            with torch.no_grad(), uncompiled(network):
                features.append(run_for_losses(network, _layers(losses, side), example_input)[1])
        finally:
            for module, mode in zip(network.modules(), was_training, strict=True):
                module.training = mode
    device = example_input.device
    for loss in _methods(losses):
        if loss.kind != "logit":
            loss.build(_pick(loss, "student", features[0]), _pick(loss, "teacher", features[1]))
            loss.to(device)
        loss.built = True


def loss_terms(
    losses: Losses,
    logits: Tensor,
    teacher_logits: Tensor,
    student_features: Mapping[str, Tensor],
    teacher_features: Mapping[str, Tensor],
    labels: Tensor,
    indices: Tensor | None,
    epoch: int | None = None,
) -> dict[str, Tensor]:
    """Each method's term, unweighted, by :func:`term_name`, and ``loss``: ``ce_weight·loss_ce`` plus each term
    times its method's ``weight`` (``terms`` holds ``loss_ce``)."""
    terms = {}
    for loss in _methods(losses):
        if loss.needs_indices and indices is None:  # CRD outside training: its memory bank is the training set's
            continue
        if loss.kind == "logit":
            warm = {"epoch": epoch} if epoch is not None and getattr(loss, "warmup", None) else {}
            terms[term_name(loss)] = loss(logits, teacher_logits, labels, **warm)  # DKD warms up (epochs from 1)
        else:
            student, teacher = _pick(loss, "student", student_features), _pick(loss, "teacher", teacher_features)
            terms[term_name(loss)] = loss(student, teacher, labels=labels, indices=indices)
    return terms


def weighted_total(losses: Losses, ce_weight: float, terms: Mapping[str, Tensor]) -> Tensor:
    """``ce_weight·loss_ce + Σ weight·term`` over the methods (methods §6.3)."""
    total = ce_weight * terms["loss_ce"]
    for loss in _methods(losses):
        if term_name(loss) in terms:
            total = total + loss.weight * terms[term_name(loss)]
    return total


def student_layers(losses: Losses) -> list[str]:
    return _layers(losses, "student")


def teacher_layers(losses: Losses) -> list[str]:
    return _layers(losses, "teacher")


def batch_indices(batch: Any, size: int) -> Tensor:
    """Each sample's dataset index: a dict batch's ``"index"``, or the last item of a tuple of three or more
    items when it is an integer vector of the batch size (``ShapesDataModule(with_index=True)`` adds it)."""
    found = batch.get("index") if isinstance(batch, Mapping) else None
    if isinstance(batch, (tuple, list)) and len(batch) >= 3:
        found = batch[-1]
    valid = isinstance(found, Tensor) and found.dim() == 1 and len(found) == size and not found.is_floating_point()
    if not valid:
        raise ValueError(
            "CRD needs each sample's dataset index: give batches as dicts with an 'index' key or as tuples whose "
            "last item is the indices (a long tensor [B]); the built-in data modules add it with `with_index=True`."
        )
    return found  # type: ignore[return-value]
