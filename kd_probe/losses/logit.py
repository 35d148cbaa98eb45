"""Logit distillation methods as ``nn.Module`` s (methods §6.4–§6.7): :class:`KD`, :class:`DKD`, :class:`DIST` and
:class:`LogitStandardKD`. Each ``forward(student_logits, teacher_logits, labels=None)`` returns the unweighted loss
of its functional in :mod:`kd_probe.core.kd.logit`; ``weight`` scales it in ``DistillationModule``'s total."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from kd_probe.core.kd.logit import dist, dkd, kd, logit_standard_kd
from kd_probe.losses._base import DistillationLoss, check_positive

__all__ = ["DIST", "DKD", "KD", "LogitStandardKD"]


class KD(DistillationLoss):
    """Hinton et al.'s logit distillation, ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (methods §6.4).

    Hinton, Vinyals, Dean, 2015, *Distilling the Knowledge in a Neural Network*. The same number as
    ``kd_probe.functional.logit_distillation_loss``.

    Args:
        temperature: softening temperature ``T > 0``; default 4 (mdistiller's CIFAR-100 setting).
        weight: the loss's weight in ``DistillationModule``'s total (mdistiller's KD: 0.9 with cross-entropy 0.1).

    Example::

        >>> s = torch.tensor([[1.0, 1.0, 2.0]]).log(); t = torch.tensor([[2.0, 1.0, 1.0]]).log()
        >>> round(float(KD(temperature=1.0)(s, t)), 6)  # ¼·ln 2
        0.173287
    """

    kind: ClassVar[str] = "logit"
    hyper: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, temperature: float = 4.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.temperature = check_positive("temperature", temperature)

    @override
    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """The loss averaged over the batch (``labels`` are not used)."""
        return kd(student_logits, teacher_logits, self.temperature)


class DKD(DistillationLoss):
    """Decoupled knowledge distillation, ``T² · (α · TCKD + β · NCKD)`` (methods §6.5).

    Zhao, Cui, Song, Qiu, Liang, 2022, *Decoupled Knowledge Distillation* (CVPR). TCKD compares the binary
    target/non-target distributions, NCKD the distributions among the non-target classes; it needs the labels.

    Args:
        alpha: weight ``α ≥ 0`` of TCKD; default 1 (mdistiller, CIFAR-100).
        beta: weight ``β ≥ 0`` of NCKD; default 8 (mdistiller, CIFAR-100; 2 or 6 for some of their pairs).
        temperature: ``T > 0``; default 4 (mdistiller, CIFAR-100).
        warmup: epochs ``≥ 0`` of mdistiller's linear warm-up ``min(epoch / warmup, 1)``; default 20. It applies only
            when ``forward`` gets ``epoch`` (counted from 1); without it the loss has no warm-up factor.
        weight: the loss's weight in ``DistillationModule``'s total (mdistiller: 1, with cross-entropy 1).

    Example::

        >>> s = torch.tensor([[1.0, 1.0, 2.0]]).log(); t = torch.tensor([[2.0, 1.0, 1.0]]).log()
        >>> round(float(DKD(temperature=1.0)(s, t, torch.tensor([0]))), 6)  # ½·ln(4/3) + 8·½·ln(9/8)
        0.614973
    """

    kind: ClassVar[str] = "logit"
    hyper: ClassVar[tuple[str, ...]] = ("alpha", "beta", "temperature", "warmup")

    def __init__(
        self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: float = 20, weight: float = 1.0
    ) -> None:
        super().__init__(weight)
        self.alpha = check_positive("alpha", alpha, zero=True)
        self.beta = check_positive("beta", beta, zero=True)
        self.temperature = check_positive("temperature", temperature)
        self.warmup = check_positive("warmup", warmup, zero=True)

    @override
    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor | None = None,
        *,
        epoch: float | None = None,
    ) -> Tensor:
        """The loss averaged over the batch; ``labels`` ``[B]`` are needed; ``epoch`` (from 1) turns on the warm-up."""
        return dkd(
            student_logits,
            teacher_logits,
            labels,
            alpha=self.alpha,
            beta=self.beta,
            temperature=self.temperature,
            warmup=self.warmup,
            epoch=epoch,
        )


class DIST(DistillationLoss):
    """DIST, ``τ² · (β · inter + γ · intra)`` with one minus Pearson correlations of the softened predictions
    (methods §6.6).

    Huang, You, Wang, Qian, Xu, 2022, *Knowledge Distillation from A Stronger Teacher* (NeurIPS). The inter-class
    relation correlates each sample's prediction over the classes, the intra-class relation each class's
    probability across the batch.

    Args:
        beta: weight ``β ≥ 0`` of the inter-class relation; default 1 (the authors' ``DIST`` loss).
        gamma: weight ``γ ≥ 0`` of the intra-class relation; default 1 (the authors' ``DIST`` loss).
        temperature: ``τ > 0``; default 1 (the authors' ``DIST`` loss, their ImageNet runs; CIFAR-100 runs use 4).
        weight: the loss's weight in ``DistillationModule``'s total; the authors weight DIST 2 with cross-entropy 1
            (the paper's ``β = γ = 2``).

    Example::

        >>> s = torch.tensor([[1.0, 2.0, 5.0], [5.0, 1.0, 2.0]]).log()
        >>> t = torch.tensor([[1.0, 2.0, 5.0], [2.0, 5.0, 1.0]]).log()
        >>> round(float(DIST()(s, t)), 6)  # inter ¾ + intra ⅔
        1.416667
    """

    kind: ClassVar[str] = "logit"
    hyper: ClassVar[tuple[str, ...]] = ("beta", "gamma", "temperature")

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.beta = check_positive("beta", beta, zero=True)
        self.gamma = check_positive("gamma", gamma, zero=True)
        self.temperature = check_positive("temperature", temperature)

    @override
    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """The loss of the batch (``labels`` are not used)."""
        return dist(student_logits, teacher_logits, beta=self.beta, gamma=self.gamma, temperature=self.temperature)


class LogitStandardKD(DistillationLoss):
    """KD on z-scored logits, each sample's logits standardised before the softmax at base temperature ``τ``
    (methods §6.7).

    Sun, Ren, Li, Wang, Cao, 2024, *Logit Standardization in Knowledge Distillation* (CVPR). The student matches the
    teacher's logits up to a per-sample shift and positive scale.

    Args:
        temperature: base temperature ``τ > 0``; default 2 (the authors' CIFAR-100 ``--base-temp``).
        weight: the loss's weight in ``DistillationModule``'s total; the authors use 9 with cross-entropy 0.1
            (``--kd-weight 9``).

    Example::

        >>> s = torch.tensor([[0.0, 1.0, 2.0]])
        >>> round(float(LogitStandardKD()(s, torch.tensor([[2.0, 1.0, 0.0]]))), 4)
        1.8844
    """

    kind: ClassVar[str] = "logit"
    hyper: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, temperature: float = 2.0, weight: float = 1.0) -> None:
        super().__init__(weight)
        self.temperature = check_positive("temperature", temperature)

    @override
    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor | None = None) -> Tensor:
        """The loss averaged over the batch (``labels`` are not used)."""
        return logit_standard_kd(student_logits, teacher_logits, self.temperature)
