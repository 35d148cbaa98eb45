"""Relation-based distillation losses as modules (methods §6.12–§6.15): :class:`SP`, :class:`PKT`, :class:`RKD`,
:class:`CC`. The math is in :mod:`kd_probe.core.kd.relation`; these classes check the settings, take one tensor
or a list of layer pairs and sum the functional over the pairs. None has learnable parts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from kd_probe.core.kd.relation import cc, pkt, rkd, sp
from kd_probe.losses._base import DistillationLoss, check_positive

__all__ = ["CC", "PKT", "RKD", "SP"]

Features = Tensor | Sequence[Tensor]


class _RelationLoss(DistillationLoss):
    """A relation loss summed over layer pairs; the layers default to the embedding (``None``)."""

    kind: ClassVar[str] = "feature"

    @override
    def forward(
        self,
        student_features: Features,
        teacher_features: Features,
        labels: Tensor | None = None,
        indices: Tensor | None = None,
    ) -> Tensor:
        """The loss summed over the layer pairs (``labels`` and ``indices`` are not used).

        Args:
            student_features: one ``[B, ...]`` tensor per layer pair (a single tensor is one pair).
            teacher_features: the teacher's tensors, in the same order; widths may differ from the student's.
        """
        students = _as_list("student_features", student_features)
        teachers = _as_list("teacher_features", teacher_features)
        if len(students) != len(teachers):
            raise ValueError(
                f"`student_features` has {len(students)} tensors and `teacher_features` {len(teachers)}; they must "
                "pair one to one (one tensor per layer pair)."
            )
        total = self._pair_loss(students[0], teachers[0])
        for student, teacher in zip(students[1:], teachers[1:], strict=True):
            total = total + self._pair_loss(student, teacher)
        return total

    def _pair_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define `_pair_loss`.")


class SP(_RelationLoss):
    """Similarity-preserving KD (Tung & Mori, 2019, *Similarity-Preserving Knowledge Distillation*; methods §6.12).

    ``γ / B² · ‖G_S − G_T‖²_F`` with ``G = Q·Qᵀ`` row-normalised, ``Q`` the features flattened per sample; summed
    over layer pairs. See :func:`kd_probe.core.kd.relation.sp`.

    Args:
        gamma: ``γ``; the paper's 3000 (also RepDistiller's weight for SP).
        weight: weight of the term in :class:`~kd_probe.DistillationModule`'s total.
        student_layers: dotted names of the student's layers (``None``: the embedding, the input of the last
            ``nn.Linear``).
        teacher_layers: the teacher's layers, paired one to one (default: ``student_layers``).

    Example::

        >>> loss = SP()
        >>> round(float(loss(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.eye(2))), 2)  # 3000 · 0.199233
        597.7
    """

    hyper: ClassVar[tuple[str, ...]] = ("gamma",)

    def __init__(
        self,
        gamma: float = 3000.0,
        weight: float = 1.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, student_layers, teacher_layers)
        self.gamma = check_positive("gamma", gamma)

    @override
    def _pair_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        return sp(student, teacher, gamma=self.gamma)


class PKT(_RelationLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas, 2018, *Learning Deep Representations with Probabilistic
    Knowledge Transfer*; methods §6.13).

    KL divergence between the teacher's and the student's conditional distributions of cosine similarities,
    averaged over the ``B²`` entries as in the authors' code; summed over layer pairs. See
    :func:`kd_probe.core.kd.relation.pkt`. The authors weigh it 1 (they train with it alone); RepDistiller uses a
    weight of 30000 next to cross-entropy on CIFAR-100.

    Args:
        eps: the small constant ``ε``; the authors' 1e-7.
        weight: weight of the term in :class:`~kd_probe.DistillationModule`'s total.
        student_layers: dotted names of the student's layers (``None``: the embedding).
        teacher_layers: the teacher's layers, paired one to one (default: ``student_layers``).

    Example::

        >>> loss = PKT()
        >>> round(float(loss(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))), 6)  # log(9/8) / 4
        0.029446
    """

    hyper: ClassVar[tuple[str, ...]] = ("eps",)

    def __init__(
        self,
        eps: float = 1e-7,
        weight: float = 1.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, student_layers, teacher_layers)
        self.eps = check_positive("eps", eps)

    @override
    def _pair_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        return pkt(student, teacher, eps=self.eps)


class RKD(_RelationLoss):
    """Relational KD (Park, Kim, Lu & Cho, 2019, *Relational Knowledge Distillation*; methods §6.14).

    ``λ_D · L_distance + λ_A · L_angle``: Huber losses between the two networks' mean-normalised pairwise
    distances and between the cosines of the angles of all triplets; summed over layer pairs. See
    :func:`kd_probe.core.kd.relation.rkd`.

    Args:
        distance_weight: ``λ_D``; the authors' CIFAR default 25 (RepDistiller's too).
        angle_weight: ``λ_A``; the authors' CIFAR default 50 (not both 0).
        weight: weight of the term in :class:`~kd_probe.DistillationModule`'s total.
        student_layers: dotted names of the student's layers (``None``: the embedding).
        teacher_layers: the teacher's layers, paired one to one (default: ``student_layers``).

    Example::

        >>> s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 3**0.5 / 2]])
        >>> round(float(RKD()(s, t)), 4)  # 25 · (34 − 24√2)/6 + 50 · (7 − 4√2)/108
        0.8671
    """

    hyper: ClassVar[tuple[str, ...]] = ("distance_weight", "angle_weight")

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        weight: float = 1.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, student_layers, teacher_layers)
        self.distance_weight = check_positive("distance_weight", distance_weight, zero=True)
        self.angle_weight = check_positive("angle_weight", angle_weight, zero=True)
        if self.distance_weight == 0 and self.angle_weight == 0:
            raise ValueError("`distance_weight` and `angle_weight` are both 0; at least one must be > 0.")

    @override
    def _pair_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        return rkd(student, teacher, distance_weight=self.distance_weight, angle_weight=self.angle_weight)


class CC(_RelationLoss):
    """Correlation congruence (Peng et al., 2019, *Correlation Congruence for Knowledge Distillation*; methods §6.15).

    ``1/B² · ‖C_S − C_T‖²_F`` where ``C`` is the ``P``-order Taylor expansion of a Gaussian RBF kernel between the
    L2-normalised samples; summed over layer pairs. See :func:`kd_probe.core.kd.relation.cc`.

    Args:
        gamma: kernel width ``γ``; 0.4 (Knowledge-Distillation-Zoo's value for the paper's kernel).
        order: Taylor order ``P``; 2 (the same source).
        weight: weight of the term in :class:`~kd_probe.DistillationModule`'s total.
        student_layers: dotted names of the student's layers (``None``: the embedding).
        teacher_layers: the teacher's layers, paired one to one (default: ``student_layers``).

    Example::

        >>> loss = CC()
        >>> round(float(loss(torch.eye(2), torch.tensor([[1.0, 0.0], [2.0, 0.0]]))), 5)  # 1.12² · exp(−1.6) / 2
        0.12663
    """

    hyper: ClassVar[tuple[str, ...]] = ("gamma", "order")

    def __init__(
        self,
        gamma: float = 0.4,
        order: int = 2,
        weight: float = 1.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, student_layers, teacher_layers)
        self.gamma = check_positive("gamma", gamma)
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ValueError(f"`order` must be an integer ≥ 1 (the order P of the Taylor expansion), got {order!r}.")
        self.order = order

    @override
    def _pair_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        return cc(student, teacher, gamma=self.gamma, order=self.order)


def _as_list(name: str, features: Features) -> list[Tensor]:
    if isinstance(features, Tensor):
        return [features]
    found = list(features) if isinstance(features, Sequence) else None
    if not found or not all(isinstance(f, Tensor) for f in found):
        described = (
            f"an empty {type(features).__name__}" if found is not None and not found else type(features).__name__
        )
        raise ValueError(
            f"`{name}` must be a tensor or a non-empty list of tensors (one per layer pair), got {described}."
        )
    return found
