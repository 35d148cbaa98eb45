"""``DistillationLoss``: the base of every method in :mod:`kd_probe.losses` (it knows none of them)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

__all__ = ["DistillationLoss", "check_positive", "layer_names"]


def check_positive(name: str, value: object, *, zero: bool = False) -> float:
    """A finite number > 0 (≥ 0 with ``zero=True``), else one sentence naming the argument and the value."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or not (value >= 0 if zero else value > 0):  # type: ignore[operator]
        bound = "≥ 0" if zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {bound}, got {value!r}.")
    return float(value)  # type: ignore[arg-type]


def layer_names(name: str, layers: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``layers`` as a tuple of dotted layer names (``None``: the loss's default, the embedding)."""
    if layers is None:
        return None
    found = (layers,) if isinstance(layers, str) else tuple(layers) if isinstance(layers, Sequence) else None
    if not found or not all(isinstance(n, str) and n for n in found):
        raise ValueError(f"`{name}` must be a layer name or a list of layer names, got {layers!r}.")
    return found


class DistillationLoss(nn.Module):
    """One knowledge-distillation method as an ``nn.Module``, weighted inside :class:`~kd_probe.DistillationModule`
    (``losses=[...]``) or used on its own.

    - ``kind = "logit"``: ``forward(student_logits, teacher_logits, labels=None)``, logits ``[B, K]``.
    - ``kind = "feature"``: ``forward(student_features, teacher_features, labels=None, indices=None)``, each a list
      of tensors, one per layer pair (``student_layers[i]`` ↔ ``teacher_layers[i]``, dotted module names). A loss
      whose layers are ``None`` takes the *embedding*: the input of each network's last ``nn.Linear`` (the
      pooled features before the classifier), as the relation and contrastive methods' papers do.
    - Learnable parts (regressors, variances, embeddings, memory banks) are created by :meth:`build` from one
      example batch of features, before the optimiser is made, so that they train with the student and are
      saved in its checkpoints. ``needs_indices``: the loss needs each sample's dataset index (CRD).

    Every hyper-parameter is checked in ``__init__`` (one sentence naming it and the value); ``weight`` scales
    the loss in the module's total.
    """

    kind: ClassVar[str] = "logit"
    needs_indices: ClassVar[bool] = False

    def __init__(
        self,
        weight: float = 1.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.weight = check_positive("weight", weight, zero=True)
        self.student_layers = layer_names("student_layers", student_layers)
        self.teacher_layers = layer_names("teacher_layers", teacher_layers) or self.student_layers
        if self.kind == "logit" and (self.student_layers or self.teacher_layers):
            raise ValueError(f"{type(self).__name__} distils logits; it takes no `student_layers`/`teacher_layers`.")
        if self.student_layers and len(self.student_layers) != len(self.teacher_layers or ()):
            raise ValueError(
                f"`student_layers` {list(self.student_layers)} and `teacher_layers` {list(self.teacher_layers or ())} "
                "must pair one to one."
            )
        self.built = False

    def build(self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> None:
        """Create the learnable parts from one example batch of features (default: none). Called once, before
        the optimiser is made; a loss with parts must be built before its first ``forward``."""
        self.built = True

    def extra_repr(self) -> str:
        return f"weight={self.weight}" + "".join(
            f", {name}={getattr(self, name)!r}" for name in getattr(self, "hyper", ()) if hasattr(self, name)
        )

    def hyperparameters(self) -> dict[str, Any]:
        """The method's settings, for logs and run files."""
        return {name: getattr(self, name) for name in getattr(self, "hyper", ())}
