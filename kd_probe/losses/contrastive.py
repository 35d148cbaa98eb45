"""Contrastive distillation (methods §6.16): :class:`CRD`, with its embeddings, memory banks and negative sampling."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_probe.core.kd.contrastive import crd, crd_normalization
from kd_probe.losses._base import DistillationLoss, check_positive

__all__ = ["CRD"]


class CRD(DistillationLoss):
    """Contrastive Representation Distillation (Tian, Krishnan & Isola 2020, ICLR; methods §6.16).

    Each network's embedding (by default the input of its last ``nn.Linear``: ``[B, D_s]`` and ``[B, D_t]``; other
    layers are flattened to ``[B, -1]``) is projected by a learned ``nn.Linear`` to ``feat_dim`` and L2-normalised.
    Two memory banks, ``memory_student`` and ``memory_teacher`` (buffers of ``num_samples × feat_dim``, one row per
    training sample), hold momentum averages of those embeddings. For each sample ``i`` of the batch, ``negatives``
    rows ``j ≠ i`` are drawn uniformly (with replacement) and the NCE objective :func:`~kd_probe.core.kd.contrastive.crd`
    is computed twice — the teacher's embedding against the student bank (positive: row ``i``) and the student's
    against the teacher bank — and summed. The constants ``Z`` of the two directions are estimated on the first
    training batch (:func:`~kd_probe.core.kd.contrastive.crd_normalization`) and kept in the buffer
    ``log_normalization`` (``[log Z_student_anchor, log Z_teacher_anchor]``, NaN until estimated). After the loss,
    in training mode only, rows ``i`` of both banks become ``normalize(m · row + (1 − m) · embedding)``.

    The negatives come from a ``torch.Generator`` of the loss's own, seeded with ``seed``, so the loss never draws
    from (or shifts) the global torch RNG. The teacher's features are detached; the teacher's *embedding* (a
    ``Linear``) is learned with the student, as in the paper.

    Defaults are the authors' CIFAR-100 settings (RepDistiller ``train_student.py``): ``feat_dim=128``
    (``--feat_dim``), ``negatives=16384`` (``--nce_k``), ``temperature=0.07`` (``--nce_t``), ``momentum=0.5``
    (``--nce_m``), ``weight=0.8`` (their ``-b 0.8``, with cross-entropy at 1 and no KD term); the banks start
    uniform in ``±√(3/feat_dim)`` (rows of unit norm on average), as in their ``crd/memory.py``. The authors'
    CIFAR loader draws negatives from the other *classes* (``--mode exact``); here they are uniform over the
    other samples, the paper's noise distribution.

    Args:
        feat_dim: size of the shared embedding space.
        negatives: ``K``, negatives per sample; capped at ``num_samples − 1`` by :meth:`build` (with a warning).
        temperature: ``τ > 0`` of the critic.
        momentum: ``m`` in ``[0, 1)`` of the memory-bank update.
        num_samples: ``N``, the training set's size (one bank row per sample); give it here or set the attribute
            before :meth:`build`.
        seed: seed of the loss's own generator for the negatives and the banks' initial values.
        weight: the loss's weight in :class:`~kd_probe.DistillationModule`'s total.
        student_layers: one student layer (dotted name) whose output is distilled; ``None``: the embedding.
        teacher_layers: the matching teacher layer; ``None``: as ``student_layers``.

    Example::

        >>> loss = CRD(num_samples=100, negatives=8)
        >>> student, teacher = torch.randn(4, 16), torch.randn(4, 32)
        >>> loss.build([student], [teacher])
        >>> value = loss([student], [teacher], indices=torch.tensor([0, 1, 2, 3]))
        >>> value.shape, tuple(loss.memory_student.shape), loss.needs_indices
        (torch.Size([]), (100, 128), True)
    """

    kind: ClassVar[str] = "feature"
    needs_indices: ClassVar[bool] = True
    hyper: ClassVar[tuple[str, ...]] = ("feat_dim", "negatives", "temperature", "momentum", "num_samples", "seed")

    embed_student: nn.Linear
    embed_teacher: nn.Linear
    memory_student: Tensor
    memory_teacher: Tensor
    log_normalization: Tensor

    def __init__(
        self,
        feat_dim: int = 128,
        negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        num_samples: int | None = None,
        seed: int = 0,
        weight: float = 0.8,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight=weight, student_layers=student_layers, teacher_layers=teacher_layers)
        if self.student_layers and len(self.student_layers) != 1:
            raise ValueError(f"CRD distils one layer pair; got `student_layers` {list(self.student_layers)}.")
        self.feat_dim = _check_count("feat_dim", feat_dim, 1)
        self.negatives = _check_count("negatives", negatives, 1)
        self.temperature = check_positive("temperature", temperature)
        self.momentum = check_positive("momentum", momentum, zero=True)
        if self.momentum >= 1:
            raise ValueError(f"`momentum` must be in [0, 1) (1 would never update the memory banks), got {momentum!r}.")
        self.num_samples = None if num_samples is None else _check_count("num_samples", num_samples, 2)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer, got {seed!r}.")
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def build(self, student_features: Sequence[Tensor] | Tensor, teacher_features: Sequence[Tensor] | Tensor) -> None:
        """Create the two embeddings (``nn.Linear`` to ``feat_dim``) from the features' widths and the two memory
        banks (``num_samples × feat_dim`` buffers); ``num_samples`` must be set."""
        student, teacher = _one_pair(student_features, teacher_features)
        if self.num_samples is None:
            raise ValueError(
                "CRD needs `num_samples`, the training set's size (one memory-bank row per sample): pass "
                "CRD(num_samples=len(train_dataset)) or set `loss.num_samples` before `build`."
            )
        count = _check_count("num_samples", self.num_samples, 2)
        if self.negatives > count - 1:
            warnings.warn(
                f"CRD: `negatives`={self.negatives} is more than the {count - 1} other samples of a {count}-sample "
                f"training set; using {count - 1}.",
                stacklevel=2,
            )
            self.negatives = count - 1
        device = student.device
        dtype = torch.promote_types(student.dtype, torch.float32)
        self.embed_student = nn.Linear(student.shape[1], self.feat_dim, device=device, dtype=dtype)
        self.embed_teacher = nn.Linear(teacher.shape[1], self.feat_dim, device=device, dtype=dtype)
        bound = math.sqrt(3 / self.feat_dim)  # uniform in ±bound: E‖row‖² = 1
        for name in ("memory_student", "memory_teacher"):
            memory = torch.rand(count, self.feat_dim, generator=self._generator, dtype=dtype) * (2 * bound) - bound
            self.register_buffer(name, memory.to(device))
        self.register_buffer("log_normalization", torch.full((2,), math.nan, dtype=dtype, device=device))
        super().build([student], [teacher])

    def forward(
        self,
        student_features: Sequence[Tensor] | Tensor,
        teacher_features: Sequence[Tensor] | Tensor,
        labels: Tensor | None = None,
        indices: Tensor | None = None,
    ) -> Tensor:
        """The CRD loss of one batch (unweighted); in training mode, then update the batch's memory-bank rows.

        Args:
            student_features: the student's embedding ``[B, D_s]`` (or a one-element list of it).
            teacher_features: the teacher's embedding ``[B, D_t]`` (detached here).
            labels: unused.
            indices: ``[B]`` each sample's index in the training set (``0 ≤ index < num_samples``).
        """
        if not self.built:
            raise ValueError(
                "CRD learns two embeddings and keeps memory banks: call `build(student_features, teacher_features)` "
                "on one example batch first, or use it inside DistillationModule, which builds it."
            )
        student, teacher = _one_pair(student_features, teacher_features)
        for name, value, embed in (
            ("student_features", student, self.embed_student),
            ("teacher_features", teacher, self.embed_teacher),
        ):
            if value.shape[1] != embed.in_features:
                raise ValueError(
                    f"`{name}` have {value.shape[1]} values per sample, but CRD was built for {embed.in_features}."
                )
        indices = self._check_indices(indices, student.shape[0])
        weight_dtype = self.embed_student.weight.dtype
        embedded_student = F.normalize(self.embed_student(student.to(weight_dtype)), dim=1)
        embedded_teacher = F.normalize(self.embed_teacher(teacher.detach().to(weight_dtype)), dim=1)
        embedded_student = embedded_student.to(self.memory_student.dtype)
        embedded_teacher = embedded_teacher.to(self.memory_teacher.dtype)

        sampled = self._draw_negatives(indices)  # [B, K], the same rows for both directions
        # (anchor, its positive, its negatives): student anchor vs the teacher bank, teacher anchor vs the student bank
        directions = (
            (embedded_student, *_rows(self.memory_teacher, indices, sampled)),
            (embedded_teacher, *_rows(self.memory_student, indices, sampled)),
        )
        count = self.memory_student.shape[0]  # the bank's rows: `num_samples` at build
        log_normalization = self.log_normalization
        if bool(torch.isnan(log_normalization).any()):
            estimated = [crd_normalization(*direction, count, self.temperature).log() for direction in directions]
            log_normalization = torch.stack(estimated).to(log_normalization)
            if self.training:  # estimated once, on the first training batch, then fixed
                self.log_normalization.copy_(log_normalization)
        losses = [
            crd(*direction, log_z.double().exp(), count, self.temperature)
            for direction, log_z in zip(directions, log_normalization, strict=True)
        ]
        loss = losses[0] + losses[1]

        if self.training:
            with torch.no_grad():
                for memory, embedded in (
                    (self.memory_student, embedded_student),
                    (self.memory_teacher, embedded_teacher),
                ):
                    rows = memory.index_select(0, indices) * self.momentum + embedded.detach() * (1 - self.momentum)
                    memory.index_copy_(0, indices, F.normalize(rows, dim=1))
        return loss

    def _check_indices(self, indices: Tensor | None, batch: int) -> Tensor:
        if indices is None:
            raise ValueError(
                "CRD needs `indices`, each batch sample's index in the training set (a LongTensor [B]), to read and "
                "update its memory banks: have the training dataset return each item's index with it."
            )
        count = self.memory_student.shape[0]  # the bank's rows: `num_samples` at build
        if (
            not isinstance(indices, Tensor)
            or indices.is_floating_point()
            or indices.is_complex()
            or indices.dtype == torch.bool
            or indices.shape != (batch,)
        ):
            described = f"{tuple(indices.shape)} {indices.dtype}" if isinstance(indices, Tensor) else repr(indices)
            raise ValueError(f"`indices` must be an integer tensor [B] with B = {batch}, got {described}.")
        low, high = (int(indices.min()), int(indices.max())) if batch else (0, 0)
        if low < 0 or high >= count:
            raise ValueError(
                f"`indices` must lie in [0, {count}) (`num_samples` = {count}), got values from {low} to {high}."
            )
        return indices.to(device=self.memory_student.device, dtype=torch.long)

    def _draw_negatives(self, indices: Tensor) -> Tensor:
        """``[B, K]`` rows drawn uniformly from the ``N − 1`` rows other than each sample's own, with replacement,
        from the loss's own generator (the global RNG is untouched)."""
        count = self.memory_student.shape[0]  # the bank's rows: `num_samples` at build
        drawn = torch.randint(0, count - 1, (indices.shape[0], self.negatives), generator=self._generator)
        drawn = drawn.to(indices.device)
        return drawn + (drawn >= indices.unsqueeze(1)).long()  # skip the sample's own row


def _rows(memory: Tensor, indices: Tensor, sampled: Tensor) -> tuple[Tensor, Tensor]:
    """The positives ``[B, D]`` (the batch's own rows) and negatives ``[B, K, D]`` (the sampled rows) of a bank."""
    negatives = memory.index_select(0, sampled.flatten()).view(*sampled.shape, memory.shape[1])
    return memory.index_select(0, indices), negatives


def _one_pair(
    student_features: Sequence[Tensor] | Tensor, teacher_features: Sequence[Tensor] | Tensor
) -> tuple[Tensor, Tensor]:
    """The one student and one teacher feature, flattened to ``[B, -1]``, or one sentence."""
    pair = []
    for name, features in (("student_features", student_features), ("teacher_features", teacher_features)):
        found = [features] if isinstance(features, Tensor) else list(features) if isinstance(features, Sequence) else []
        if (
            len(found) != 1
            or not isinstance(found[0], Tensor)
            or not found[0].is_floating_point()
            or found[0].dim() < 2
        ):
            described = (
                f"{tuple(found[0].shape)} {found[0].dtype}"
                if len(found) == 1 and isinstance(found[0], Tensor)
                else f"{len(found)} items"
                if found
                else type(features).__name__
            )
            raise ValueError(
                f"`{name}` must be one float tensor [B, D] (or a one-element list: CRD distils one layer pair), "
                f"got {described}."
            )
        pair.append(found[0].flatten(1))
    student, teacher = pair
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"`student_features` {tuple(student.shape)} and `teacher_features` {tuple(teacher.shape)} must have the "
            "same batch size."
        )
    return student, teacher


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer ≥ {minimum}, got {value!r}.")
    return value
