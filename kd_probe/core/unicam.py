"""UniCAM ([UC], methods §3): where in the image lie the features that model X holds beyond model Y.

``UniCAM(student, teacher)`` gives *distilled* maps (what the student holds that is relevant to the labels,
given the teacher — or given an independently trained reference); ``UniCAM(teacher, student)`` gives
*residual* maps (what the teacher holds that the student did not take). Pure torch; both models are left as
they were (methods §4: eval mode only during the call, hooks removed in ``finally``, gradients taken with
``torch.autograd.grad`` so no parameter's ``.grad`` is touched, frozen models work because the input is made
to require grad).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_probe.core.agreement import _check_max_batch, _chunk_slices, _not_a_tensor, weighted_activations
from kd_probe.core.distance_correlation import EPS, label_embedding, relevance_given, residual_matrix
from kd_probe.core.layers import capture_outputs, forward_until, module_device, probing, resolve_layer, unwrap_compiled
from kd_probe.core.precision import autocast_off, computes_in_float32
from kd_probe.core.render import per_image_unit
from kd_probe.core.tokens import check_prefix_tokens, token_grid

__all__ = [
    "FEATURES",
    "OBJECTIVES",
    "UniCAM",
    "UniCAMPass",
    "UniCAMResult",
    "check_features",
    "feature_vectors",
    "layer_features",
    "max_row_score",
    "pooled_features",
]

OBJECTIVES = ("relevance", "max_row")
FEATURES = ("pooled", "flattened")  # how a feature map becomes one vector per sample (methods §3, option)


class UniCAMResult(NamedTuple):
    """UniCAM maps ``[N, H, W]`` (each scaled to [0, 1]) and the scalar ``s`` they explain."""

    maps: Tensor
    score: float


def check_features(features: str) -> None:
    """Refuse a ``features`` choice other than ``"pooled"`` or ``"flattened"``."""
    if features not in FEATURES:
        raise ValueError(
            f"`features` must be 'pooled' (feature maps globally average-pooled) or 'flattened' (the whole map "
            f"per sample, as the [UC] authors do for intermediate layers), got {features!r}."
        )


def feature_vectors(output: Tensor, features: str = "pooled") -> Tensor:
    """A layer's output ``[N, ...]`` as one feature vector per sample ``[N, D]`` (methods §3: "pooled or flattened
    features"): ``"pooled"`` averages a 4-D ``[N, C, H, W]`` map over its positions (``D = C``), ``"flattened"``
    keeps the whole map (``D = C·H·W``); any other output is flattened either way."""
    check_features(features)
    return output.mean(dim=(2, 3)) if output.dim() == 4 and features == "pooled" else output.flatten(1)


def pooled_features(output: Tensor) -> Tensor:
    """:func:`feature_vectors` with ``features="pooled"``: global average pooling of ``[N, C, H, W]`` maps,
    flattening otherwise."""
    return feature_vectors(output, "pooled")


@computes_in_float32
def layer_features(
    model: nn.Module,
    layer: str,
    images: Tensor,
    *,
    argument: str = "layer",
    max_batch: int | None = None,
    features: str = "pooled",
) -> Tensor:
    """Features ``[N, D]`` of ``layer`` for ``images`` (:func:`feature_vectors`: a feature map pooled, or flattened
    with ``features="flattened"``), in eval mode without gradients (modes restored), at most ``max_batch``
    images per forward (``None``: all at once); the modules after the layer do not run.
    Computes in float32 with autocast off, whatever the caller's autocast."""
    _check_max_batch(max_batch)
    check_features(features)
    model = unwrap_compiled(model)
    with probing(model), torch.no_grad():
        device = module_device(model, images.device)
        return torch.cat(
            [
                feature_vectors(
                    forward_until(model, layer, images[chunk].to(device), argument=argument), features
                ).detach()
                for chunk in _chunk_slices(images.shape[0], max_batch)
            ]
        )


def max_row_score(x: Tensor, y: Tensor, *, eps: float = EPS) -> Tensor:
    """``s = Σ_i max_j P_ij`` with ``P = P(Ã|B̃)`` (methods §3, ``objective="max_row"``): the scalar the authors'
    scripts explain (each row of the residual matrix treated as the "logits" of a class-free Grad-CAM).
    0 when ``P`` is zero up to rounding (:func:`residual_matrix`), NaN for NaN or infinite features."""
    return residual_matrix(x, y, eps=eps).max(dim=1).values.sum()


class UniCAM:
    """UniCAM maps: Grad-CAM of a distance-correlation score instead of a class logit ([UC], methods §3).

    The score is ``s = R*(F_X | F_Y, G)`` — the relevance to the labels ``G`` of what model X's features hold
    beyond model Y's — computed on the whole batch; the map of each image is ``ReLU(Σ_k α_k A_k)`` with
    ``α_k = mean_{u,v} ∂s/∂A_k`` over the activations ``A`` of X's ``layer``, scaled to [0, 1] per image and
    bilinearly upsampled to the input size. Maps depend on the batch (they explain a batch-level score), so
    keep the batch fixed when comparing runs. X = student, Y = teacher (or a reference student) gives the
    *distilled* map; X = teacher (or reference), Y = student the *residual* map.

    Args:
        model_x: the model explained.
        model_y: the model it is compared with (only its features are used, without gradients).
        layer: dotted name of the convolutional layer of X whose activations the map is built from.
        feature_layer_x: the layer of X whose output gives ``F_X``; default ``layer``. It must run after (or
            be) ``layer``.
        feature_layer_y: the layer of Y that gives ``F_Y``; default the same name as ``feature_layer_x``.
        objective: ``"relevance"`` (``s = R*(X|Y, G)``) or ``"max_row"`` (``s = Σ_i max_j P_ij``, as the
            authors' scripts; the labels are then not used).
        prefix_tokens: when ``layer`` outputs transformer tokens ``[N, T, D]``, the leading tokens that are not
            patches (``None``: infer a class token or none; see :func:`~kd_probe.core.tokens.token_grid`).
        features: how a 4-D feature map becomes ``F_X`` and ``F_Y``: ``"pooled"`` (globally average-pooled,
            the default: comparable across layers of any size, cheap) or ``"flattened"`` (the whole map per
            sample, as the [UC] authors do for intermediate layers: paper-comparable). Other outputs are
            flattened either way (:func:`feature_vectors`).

    Example::

        >>> from kd_probe.models import VGG
        >>> student, teacher = VGG(3, widths=(8, 16)), VGG(3, widths=(16, 32))
        >>> distilled = UniCAM(student, teacher, layer="features.relu4")
        >>> result = distilled(torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2]))
        >>> tuple(result.maps.shape), bool(result.maps.max() <= 1), -1 <= result.score <= 1
        ((6, 16, 16), True, True)
    """

    def __init__(
        self,
        model_x: nn.Module,
        model_y: nn.Module,
        *,
        layer: str,
        feature_layer_x: str | None = None,
        feature_layer_y: str | None = None,
        objective: str = "relevance",
        prefix_tokens: int | None = None,
        features: str = "pooled",
    ) -> None:
        for name, model in (("model_x", model_x), ("model_y", model_y)):
            if not isinstance(model, nn.Module):
                raise TypeError(f"`{name}` must be an nn.Module, got {type(model).__name__}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}.")
        check_features(features)
        self.features = features
        model_x, model_y = unwrap_compiled(model_x), unwrap_compiled(model_y)
        self.model_x, self.model_y, self.objective = model_x, model_y, objective
        check_prefix_tokens(prefix_tokens)
        self.prefix_tokens = prefix_tokens
        self.layer = layer
        self.feature_layer_x = feature_layer_x or layer
        self.feature_layer_y = feature_layer_y or self.feature_layer_x
        resolve_layer(model_x, layer, argument="layer")
        resolve_layer(model_x, self.feature_layer_x, argument="feature_layer_x")
        resolve_layer(model_y, self.feature_layer_y, argument="feature_layer_y")

    def features_y(self, images: Tensor, *, max_batch: int | None = None) -> Tensor:
        """``F_Y`` for ``images`` (to compute once and pass to every call when Y is frozen), at most
        ``max_batch`` images per forward."""
        return layer_features(
            self.model_y,
            self.feature_layer_y,
            images,
            argument="feature_layer_y",
            max_batch=max_batch,
            features=self.features,
        )

    @computes_in_float32
    def __call__(
        self, images: Tensor, targets: Tensor, *, features_y: Tensor | None = None, max_batch: int | None = None
    ) -> UniCAMResult:
        """Maps ``[N, H, W]`` and the score for a batch.

        The score couples all images, so with ``max_batch`` the features of every image are computed first,
        chunk by chunk without gradients; the gradient of the score with respect to them is then carried back
        to the layer's activations by a second forward of each chunk. Maps and score do not depend on
        ``max_batch``. NaN or infinite features give a NaN score and all-NaN maps.
        Computes in float32 with autocast off, whatever the caller's autocast.

        Args:
            images: ``[N, C, H, W]`` inputs as the models expect them, ``N ≥ 4`` (moved to each model's
                device ``max_batch`` at a time; the maps are on X's).
            targets: integer labels ``[N]`` (one-hot ``G``) or label vectors ``[N, d]``; unused by ``"max_row"``.
            features_y: ``F_Y`` from :meth:`features_y`, when cached.
            max_batch: most images per forward and backward (``None``: all at once).
        """
        _check_images(images)
        if images.shape[0] < 4:
            raise ValueError(
                f"`images` holds {images.shape[0]} images; UniCAM explains a batch-level distance correlation, "
                "which needs N ≥ 4 (n = 1 is undefined)."
            )
        _check_max_batch(max_batch)
        self._labels(targets, images.shape[0])
        fy = self.features_y(images, max_batch=max_batch) if features_y is None else features_y
        with self.forward_pass(images, max_batch=max_batch) as forward:
            score, feature_gradient = self.score(forward.features, fy, targets)
            maps = forward.maps(feature_gradient)
        return UniCAMResult(maps, float(score))

    @contextmanager
    def forward_pass(self, images: Tensor, *, max_batch: int | None = None) -> Iterator[UniCAMPass]:
        """The forward half of a call, for a batch or a share of one (any ``N ≥ 1``, e.g. one process's images
        when the batch is spread over several): X's features of ``images`` (:attr:`UniCAMPass.features`), then,
        given the gradient of the score computed on the whole batch (:meth:`score`), their maps
        (:meth:`UniCAMPass.maps`) — the maps of a share equal those rows of the whole batch's. X stays in eval
        mode, with the layer's activations recorded, inside the block; autocast is off there.

        Example::

            >>> from kd_probe.models import VGG
            >>> unicam = UniCAM(VGG(3, widths=(8, 16)), VGG(3, widths=(16, 32)), layer="features.relu4")
            >>> images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
            >>> with unicam.forward_pass(images) as forward:
            ...     score, gradient = unicam.score(forward.features, unicam.features_y(images), labels)
            ...     maps = forward.maps(gradient)
            >>> torch.equal(maps, unicam(images, labels).maps)
            True
        """
        _check_images(images)
        _check_max_batch(max_batch)
        chunks = _chunk_slices(images.shape[0], max_batch)
        with autocast_off(), capture_outputs(self.model_x, [self.layer]) as captured, probing(self.model_x):
            yield UniCAMPass(self, images.detach(), chunks, captured)

    @computes_in_float32
    def score(self, features_x: Tensor, features_y: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The score ``s`` of the whole batch (methods §3) from both models' features ``[N, D]`` and the targets,
        and its gradient ``∂s/∂F_X`` ``[N, D]`` (for :meth:`UniCAMPass.maps`); NaN for both when a feature is
        NaN or infinite."""
        labels = self._labels(targets, features_x.shape[0])
        fx = features_x.detach()
        return self._score(fx, features_y.detach().to(fx.device), labels.to(fx.device))

    def _forward(self, inputs: Tensor, captured: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Features ``F_X`` of a chunk and the activations of ``layer`` they come from (with a graph to
        the activations when grad is enabled: frozen models still give one, the input requires grad)."""
        captured.clear()
        inputs = inputs.to(module_device(self.model_x, inputs.device)).clone().requires_grad_(torch.is_grad_enabled())
        features = feature_vectors(
            forward_until(self.model_x, self.feature_layer_x, inputs, argument="feature_layer_x"), self.features
        )
        activation = captured.get(self.layer)
        if activation is None:
            raise ValueError(
                f"`layer`={self.layer!r} does not run before `feature_layer_x`={self.feature_layer_x!r}, so the "
                "features do not depend on its activations; name a layer at or before the features."
            )
        if not isinstance(activation, Tensor):
            raise ValueError(_not_a_tensor("layer", self.layer, activation))
        return features, activation

    def _score(self, fx: Tensor, fy: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The score ``s`` of the objective (methods §3) on the whole batch and its gradient ``∂s/∂F_X``; NaN for
        both when a feature is NaN or infinite."""
        leaf = fx.detach().requires_grad_(True)
        score = max_row_score(leaf, fy) if self.objective == "max_row" else relevance_given(leaf, fy, labels)
        if not bool(torch.isfinite(fx).all() and torch.isfinite(fy).all()):
            return score.detach(), torch.full_like(leaf, math.nan)
        if not score.requires_grad:  # X's features are all equal: s = 0 whatever they are
            return score.detach(), torch.zeros_like(leaf)
        (gradient,) = torch.autograd.grad(score, leaf)
        return score.detach(), gradient

    @staticmethod
    def _labels(targets: Tensor, count: int) -> Tensor:
        targets = torch.as_tensor(targets)
        if targets.dim() == 0 or targets.shape[0] != count:
            raise ValueError(
                f"`targets` must hold one label (or label vector) per image, {count} rows, "
                f"got shape {tuple(targets.shape)}."
            )
        return targets if targets.is_floating_point() else label_embedding(targets)


class UniCAMPass:
    """The forward half of a :class:`UniCAM` call on some images (from :meth:`UniCAM.forward_pass`): their
    features ``F_X`` (:attr:`features`, ``[n, D]``, detached) and, given the score's gradient with respect to
    them, their maps (:meth:`maps`, once). With one chunk the forward's graph serves both; with several, each
    chunk is forwarded again for its maps."""

    def __init__(self, unicam: UniCAM, inputs: Tensor, chunks: list[slice], captured: dict[str, Tensor]) -> None:
        self.unicam, self.inputs, self.chunks, self.captured = unicam, inputs, chunks, captured
        self.graph: tuple[Tensor, Tensor] | None = None
        if len(chunks) == 1:  # one forward with grad serves both passes
            self.graph = unicam._forward(inputs, captured)
            self.features = self.graph[0].detach()
        else:
            with torch.no_grad():
                self.features = torch.cat([unicam._forward(inputs[chunk], captured)[0] for chunk in chunks])

    def maps(self, feature_gradient: Tensor) -> Tensor:
        """Maps ``[n, H, W]`` (each scaled to [0, 1]) for ``feature_gradient`` ``[n, D]``, this pass's rows of
        ``∂s/∂F_X`` (:meth:`UniCAM.score`); all NaN for an image whose activations or gradients are not finite."""
        unicam, maps = self.unicam, []
        for chunk in self.chunks:
            graph, self.graph = self.graph, None
            features, activation = graph if graph is not None else unicam._forward(self.inputs[chunk], self.captured)
            (gradient,) = torch.autograd.grad(
                features, activation, grad_outputs=feature_gradient[chunk].to(features.device), allow_unused=True
            )
            if gradient is None:
                raise ValueError(
                    f"the features of `feature_layer_x`={unicam.feature_layer_x!r} do not depend on `layer`="
                    f"{unicam.layer!r} (a parallel branch?); name a layer the features are computed from."
                )
            grid = partial(
                token_grid,
                image_size=tuple(self.inputs.shape[-2:]),
                batch=len(feature_gradient[chunk]),
                prefix_tokens=unicam.prefix_tokens,
                layer=unicam.layer,
            )
            maps.append(weighted_activations(grid(activation), grid(gradient)))
        scaled = per_image_unit(torch.cat(maps))
        upsampled = F.interpolate(scaled[:, None], size=self.inputs.shape[-2:], mode="bilinear", align_corners=False)
        return upsampled[:, 0].clamp(0, 1)


def _check_images(images: object) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a float tensor [N, C, H, W], got {shape}.")
