"""Feature-map distillation losses as modules: :class:`FitNets`, :class:`AT`, :class:`NST` and :class:`VID`
(methods §6.8–§6.11). The math is in :mod:`kd_probe.core.kd.feature`; these classes own the learnable parts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from kd_probe.core.adapters import build_adapter
from kd_probe.core.kd.feature import at, feature_pairs, fitnets, match_spatial_size, nst, vid
from kd_probe.losses._base import DistillationLoss, check_positive

__all__ = ["AT", "NST", "VID", "FitNets"]

Features = Tensor | Sequence[Tensor]


class FitNets(DistillationLoss):
    """FitNets' hint loss: MSE between a learned regressor of the student's hint feature and the teacher's feature.

    Romero et al., 2015, "FitNets: Hints for Thin Deep Nets" (ICLR), methods §6.8; the math is
    :func:`kd_probe.core.kd.feature.fitnets`. :meth:`build` creates one regressor per layer pair with
    :func:`kd_probe.core.adapters.build_adapter` (the same adapters as ``DistillationModule``'s ``feature_pairs``):
    a 1×1 convolution (no bias) for maps ``[B, C_s, H, W] → [B, C_t, H, W]``, a linear layer for vectors
    ``[B, D_s] → [B, D_t]`` and for tokens ``[B, T, D_s] → [B, T, D_t]``, and none when the shapes already match.
    Maps of different heights or widths are first brought to the smaller size by adaptive average pooling of the
    larger (the student's before its regressor, or the teacher's), where the paper instead sizes a convolutional
    regressor's kernel so that its output matches the teacher's map.

    ``weight = 1``: in the authors' hint stage (stage 1) the hint loss is the only objective, unweighted; the
    common single-stage recipes (RepDistiller, mdistiller) add it to cross-entropy with weight 100.

    Args:
        weight: the loss's weight in ``DistillationModule``'s total.
        student_layers: the student's hint layers (dotted module names), one per pair.
        teacher_layers: the teacher's guided layers, one per pair (default: the student's names).

    Example::

        >>> loss = FitNets()
        >>> student, teacher = [torch.randn(2, 8, 4, 4)], [torch.randn(2, 16, 4, 4)]
        >>> loss.build(student, teacher)
        >>> loss.regressors[0]
        Conv2d(8, 16, kernel_size=(1, 1), stride=(1, 1), bias=False)
        >>> loss(student, teacher).shape
        torch.Size([])
    """

    kind: ClassVar[str] = "feature"
    hyper: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        weight: float = 1.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, student_layers, teacher_layers)
        self.regressors = nn.ModuleList()

    def build(self, student_features: Features, teacher_features: Features) -> None:
        regressors = []
        for i, (s, t) in enumerate(feature_pairs(student_features, teacher_features)):
            s, t = match_spatial_size(s, t)
            adapter = build_adapter(tuple(s.shape), tuple(t.shape), pair=_pair_name(self, i))
            regressors.append(nn.Identity() if adapter is None else adapter.to(device=s.device, dtype=s.dtype))
        self.regressors = nn.ModuleList(regressors)
        super().build(student_features, teacher_features)  # type: ignore[arg-type]

    def forward(
        self, student_features: Features, teacher_features: Features, labels: Any = None, indices: Any = None
    ) -> Tensor:
        pairs = feature_pairs(student_features, teacher_features)
        _check_built(self, len(pairs), len(self.regressors))
        adapted = [match_spatial_size(s, t) for s, t in pairs]
        return fitnets([r(s) for r, (s, _) in zip(self.regressors, adapted, strict=True)], [t for _, t in adapted])


class AT(DistillationLoss):
    """Attention transfer: match the student's normalised spatial attention maps ``Σ_c |A_c|^p`` to the teacher's.

    Zagoruyko & Komodakis, 2017, "Paying More Attention to Attention" (ICLR), methods §6.9; the math is
    :func:`kd_probe.core.kd.feature.at`. No learnable parts: channels may differ between the networks, and maps of
    different sizes are pooled to the smaller. It compares maps, so name convolutional layers: :meth:`build` refuses
    vectors (the embedding taken without layers). Defaults from the authors' code: ``beta = 1000``, ``p = 2``.

    Args:
        beta: the paper's weight ``β > 0`` of the attention term (the loss is ``β/2 ·`` the mean squared distance).
        p: the exponent ``p > 0`` of the attention map.
        weight: the loss's weight in ``DistillationModule``'s total (``β`` already scales it).
        student_layers: the student's layers, one per pair.
        teacher_layers: the teacher's layers, one per pair (default: the student's names).

    Example::

        >>> loss = AT()
        >>> maps = torch.rand(2, 8, 4, 4)
        >>> round(float(loss(maps, 3.0 * maps[:, [7, 6, 5, 4, 3, 2, 1, 0]])), 6)  # scaled, channels reordered
        0.0
    """

    kind: ClassVar[str] = "feature"
    hyper: ClassVar[tuple[str, ...]] = ("beta", "p")

    def __init__(
        self,
        beta: float = 1000.0,
        p: float = 2.0,
        weight: float = 1.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, student_layers, teacher_layers)
        self.beta = check_positive("beta", beta)
        self.p = check_positive("p", p)

    def build(self, student_features: Features, teacher_features: Features) -> None:
        _require_maps(self, student_features, teacher_features)
        super().build(student_features, teacher_features)  # type: ignore[arg-type]

    def forward(
        self, student_features: Features, teacher_features: Features, labels: Any = None, indices: Any = None
    ) -> Tensor:
        return at(student_features, teacher_features, self.beta, self.p)


class NST(DistillationLoss):
    """Neuron selectivity transfer: the squared MMD between the sets of normalised channel maps, polynomial kernel.

    Huang & Wang, 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", methods §6.10;
    the math is :func:`kd_probe.core.kd.feature.nst`. No learnable parts; like :class:`AT` it compares maps, and
    :meth:`build` refuses vectors. Defaults from the paper and the authors' code: kernel ``(xᵀy + c)^d`` with
    ``d = 2``, ``c = 0``, and ``weight = 50`` (the released ImageNet configuration's ``kt_weight`` for the
    polynomial kernel, applied to the MMD² itself).

    Args:
        d: the kernel's degree, an integer ≥ 1.
        c: the kernel's constant ``c ≥ 0``.
        weight: the loss's weight in ``DistillationModule``'s total.
        student_layers: the student's layers, one per pair.
        teacher_layers: the teacher's layers, one per pair (default: the student's names).

    Example::

        >>> loss = NST()
        >>> maps = torch.rand(2, 8, 4, 4)
        >>> abs(float(loss(maps, maps[:, [7, 6, 5, 4, 3, 2, 1, 0]]))) < 1e-6  # the same set of channels
        True
    """

    kind: ClassVar[str] = "feature"
    hyper: ClassVar[tuple[str, ...]] = ("d", "c")

    def __init__(
        self,
        d: int = 2,
        c: float = 0.0,
        weight: float = 50.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, student_layers, teacher_layers)
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"`d` (the polynomial kernel's degree) must be an integer ≥ 1, got {d!r}.")
        self.d = d
        self.c = check_positive("c", c, zero=True)

    def build(self, student_features: Features, teacher_features: Features) -> None:
        _require_maps(self, student_features, teacher_features)
        super().build(student_features, teacher_features)  # type: ignore[arg-type]

    def forward(
        self, student_features: Features, teacher_features: Features, labels: Any = None, indices: Any = None
    ) -> Tensor:
        return nst(student_features, teacher_features, self.d, self.c)


class VID(DistillationLoss):
    """Variational information distillation: the negative log-likelihood of the teacher's feature under
    ``N(μ(s), σ²)``, with a learned mean regressor ``μ`` and a learned per-channel variance ``σ²``.

    Ahn et al., 2019, "Variational Information Distillation for Knowledge Transfer" (CVPR), methods §6.11; the
    math is :func:`kd_probe.core.kd.feature.vid`. :meth:`build` creates, per layer pair, the regressor ``μ``
    (1×1 conv ``C_s → C_t`` – ReLU – 1×1 conv ``C_t → C_t`` – ReLU – 1×1 conv ``C_t → C_t``, no biases; linear
    layers for vectors ``[B, D]``) and ``α ∈ R^{C_t}`` with ``σ_c² = log(1 + exp(α_c)) + ε`` starting at
    ``initial_variance``. Maps of different sizes are first pooled to the smaller. Defaults from the authors' code
    (as published in RepDistiller and mdistiller): ``initial_variance = 5``, ``eps = 1e-5``, hidden width
    ``C_t``, ``weight = 1``.

    Args:
        initial_variance: ``σ²`` of every channel at the start (``> eps``).
        eps: the variance floor ``ε > 0``.
        weight: the loss's weight in ``DistillationModule``'s total.
        student_layers: the student's layers, one per pair.
        teacher_layers: the teacher's layers, one per pair (default: the student's names).

    Example::

        >>> loss = VID()
        >>> student, teacher = [torch.randn(2, 8, 4, 4)], [torch.randn(2, 16, 2, 2)]
        >>> loss.build(student, teacher)
        >>> [tuple(p.shape) for p in loss.parameters()]
        [(16, 8, 1, 1), (16, 16, 1, 1), (16, 16, 1, 1), (16,)]
        >>> loss(student, teacher).shape
        torch.Size([])
    """

    kind: ClassVar[str] = "feature"
    hyper: ClassVar[tuple[str, ...]] = ("initial_variance", "eps")

    def __init__(
        self,
        initial_variance: float = 5.0,
        eps: float = 1e-5,
        weight: float = 1.0,
        student_layers: str | Sequence[str] | None = None,
        teacher_layers: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(weight, student_layers, teacher_layers)
        self.eps = check_positive("eps", eps)
        self.initial_variance = check_positive("initial_variance", initial_variance)
        if self.initial_variance <= self.eps:
            raise ValueError(f"`initial_variance` must be > `eps` ({eps!r}), got {initial_variance!r}.")
        self.regressors = nn.ModuleList()
        self.alpha = nn.ParameterList()

    def build(self, student_features: Features, teacher_features: Features) -> None:
        regressors, alphas = [], []
        excess = self.initial_variance - self.eps  # softplus(α) = excess  ⇔  α = excess + log(1 − exp(−excess))
        alpha = excess + math.log(-math.expm1(-excess))
        for i, (s, t) in enumerate(feature_pairs(student_features, teacher_features)):
            s, t = match_spatial_size(s, t)
            if s.dim() == t.dim() == 4:
                layer: type[nn.Module] = nn.Conv2d
            elif s.dim() == t.dim() == 2:
                layer = nn.Linear
            else:
                raise ValueError(
                    f"VID's feature pair {_pair_name(self, i)} must be two maps [B, C, H, W] or two vectors [B, D], "
                    f"got student {tuple(s.shape)} and teacher {tuple(t.shape)}."
                )
            c_s, c_t = s.shape[1], t.shape[1]
            kwargs: dict[str, Any] = {"kernel_size": 1, "bias": False} if layer is nn.Conv2d else {"bias": False}
            regressor = nn.Sequential(
                layer(c_s, c_t, **kwargs), nn.ReLU(), layer(c_t, c_t, **kwargs), nn.ReLU(), layer(c_t, c_t, **kwargs)
            )
            regressors.append(regressor.to(device=s.device, dtype=s.dtype))
            alphas.append(nn.Parameter(torch.full((c_t,), alpha, device=s.device, dtype=s.dtype)))
        self.regressors, self.alpha = nn.ModuleList(regressors), nn.ParameterList(alphas)
        super().build(student_features, teacher_features)  # type: ignore[arg-type]

    def forward(
        self, student_features: Features, teacher_features: Features, labels: Any = None, indices: Any = None
    ) -> Tensor:
        pairs = feature_pairs(student_features, teacher_features)
        _check_built(self, len(pairs), len(self.regressors))
        matched = [match_spatial_size(s, t) for s, t in pairs]
        means = [regressor(s) for regressor, (s, _) in zip(self.regressors, matched, strict=True)]
        return vid(means, [t for _, t in matched], list(self.alpha), self.eps)


def _pair_name(loss: DistillationLoss, i: int) -> str:
    if loss.student_layers and loss.teacher_layers and i < len(loss.student_layers):
        return f"{loss.student_layers[i]!r} -> {loss.teacher_layers[i]!r}"
    return f"#{i}"


def _require_maps(loss: DistillationLoss, student_features: Features, teacher_features: Features) -> None:
    """AT and NST compare feature maps: refuse vectors (the default layers' embedding) at build, naming the fix."""
    for i, (s, t) in enumerate(feature_pairs(student_features, teacher_features)):
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(
                f"{type(loss).__name__} compares feature maps [B, C, H, W], but pair {_pair_name(loss, i)} gives "
                f"student {tuple(s.shape)} and teacher {tuple(t.shape)}; name convolutional layers in "
                "`student_layers`/`teacher_layers` (without them a loss takes the embedding, a vector)."
            )


def _check_built(loss: DistillationLoss, pairs: int, built: int) -> None:
    name = type(loss).__name__
    if not loss.built:
        raise ValueError(
            f"{name} has learnable parts: call `build(student_features, teacher_features)` on one example batch "
            "first, or use it inside DistillationModule, which builds it."
        )
    if pairs != built:
        raise ValueError(f"{name} was built for {built} layer pairs, got {pairs}.")
