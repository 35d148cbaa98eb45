"""What gets distilled [WK]: Grad-CAM, I-FGSM and the teacher–student agreement scores (methods §2), pure torch.

Every function leaves the model as it found it (methods §4): eval mode only for the duration of the call,
hooks removed in ``finally``, gradients taken with ``torch.autograd.grad`` so no parameter's ``.grad`` is
touched, and frozen models work because the input is made to require grad.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_probe.core.layers import capture_outputs, probing, resolve_layer, unwrap_compiled
from kd_probe.core.precision import computes_in_float32
from kd_probe.core.tokens import check_prefix_tokens, token_grid

__all__ = [
    "adversarial_transfer",
    "cam_cosine",
    "cam_energy_in_mask",
    "cam_win_rate",
    "cam_wins",
    "fooled",
    "grad_cam",
    "ifgsm",
    "prediction_agreement",
    "prediction_unchanged",
    "predictions",
    "weighted_activations",
]


@computes_in_float32
def grad_cam(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    layer: str,
    max_batch: int | None = None,
    prefix_tokens: int | None = None,
) -> Tensor:
    """Grad-CAM ``[N, H, W]`` of class ``targets[i]`` for image ``i`` at ``layer`` (methods §2).

    ``α_k = mean_{u,v} ∂y_c/∂A_k`` over the layer's activations ``A``; map ``ReLU(Σ_k α_k A_k)``, bilinearly
    upsampled to the input size (not normalised: compare maps with :func:`cam_cosine`). The map of an image
    whose logits, activations or gradients hold a NaN or infinity is all NaN, never a plausible map.
    Computes in float32 with autocast off, whatever the caller's autocast.

    Args:
        model: any ``nn.Module``, left as it was (methods §4).
        images: ``[N, C, H, W]`` inputs as the model expects them.
        targets: ``[N]`` the class explained for each image.
        layer: dotted name of a layer whose output is a feature map ``[N, C, h, w]`` (a convolution, a block)
            or transformer tokens ``[N, T, D]`` (a ViT block; the patch tokens are laid out as a grid, see
            :func:`~kd_probe.core.tokens.token_grid`). Its output is read as the layer returned it, even when
            a later in-place operation overwrites it.
        max_batch: most images per forward and backward (``None``: all at once); the maps do not depend on it.
        prefix_tokens: for token outputs, the leading tokens that are not patches (``None``: infer a class
            token or none).

    Example::

        >>> from kd_probe.models import VGG
        >>> cams = grad_cam(VGG(num_classes=3), torch.randn(2, 3, 16, 16), torch.tensor([0, 2]), layer="features.relu2")
        >>> tuple(cams.shape), bool((cams >= 0).all())
        ((2, 16, 16), True)
    """
    model = unwrap_compiled(model)
    resolve_layer(model, layer)
    _check(images, targets)
    _check_max_batch(max_batch)
    check_prefix_tokens(prefix_tokens)
    maps = []
    with capture_outputs(model, [layer]) as captured, probing(model):
        for chunk in _chunk_slices(images.shape[0], max_batch):
            captured.clear()
            inputs = images[chunk].detach().clone().requires_grad_(True)  # frozen models still give a graph
            logits = model(inputs)
            if layer not in captured:
                raise ValueError(f"`layer`={layer!r} exists but did not run in the forward of {type(model).__name__}.")
            activation = captured[layer]
            if not isinstance(activation, Tensor):
                raise ValueError(_not_a_tensor("layer", layer, activation))
            score = logits.gather(1, targets[chunk].view(-1, 1).to(logits.device)).sum()
            (gradient,) = torch.autograd.grad(score, activation)
            grid = partial(
                token_grid, image_size=tuple(images.shape[-2:]), batch=len(inputs), prefix_tokens=prefix_tokens
            )
            cam = weighted_activations(grid(activation, layer=layer), grid(gradient, layer=layer))
            broken = ~torch.isfinite(logits.detach().flatten(1)).all(dim=1).to(cam.device)
            maps.append(torch.where(broken[:, None, None], torch.full_like(cam, math.nan), cam))
    return F.interpolate(torch.cat(maps)[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def weighted_activations(activation: Tensor, gradient: Tensor) -> Tensor:
    """The Grad-CAM map at the layer's resolution ``[N, h, w]`` (methods §2, and UniCAM in §3):
    ``α_k = mean_{u,v} ∂s/∂A_k``, ``ReLU(Σ_k α_k A_k)``, detached; all NaN for an image whose activations or
    gradients hold a NaN or infinity (``ReLU`` would turn ``−∞`` into a plausible 0)."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1)).detach()
    finite = torch.isfinite(activation.detach()).flatten(1).all(dim=1) & torch.isfinite(gradient).flatten(1).all(dim=1)
    return torch.where(finite[:, None, None], cam, torch.full_like(cam, math.nan))


@computes_in_float32
def ifgsm(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float | Tensor,
    steps: int = 5,
    step_size: float | Tensor | None = None,
    clamp: tuple[float | Tensor, float | Tensor] | None = None,
    max_batch: int | None = None,
) -> Tensor:
    """Untargeted iterative FGSM (methods §2): ``steps`` signed-gradient ascent steps of size ``step_size``
    (default ``eps / 4``) on the cross-entropy to ``labels``, projected onto the L∞ ball of radius ``eps``
    around ``images`` and into ``clamp = (low, high)``. ``eps``, ``step_size`` and ``clamp`` are in the units
    of ``images`` (tensors broadcast, e.g. per channel for normalised inputs). Images are attacked
    independently, at most ``max_batch`` at a time (``None``: all at once; the result does not depend on it).
    Computes in float32 with autocast off, whatever the caller's autocast.

    Raises:
        FloatingPointError: the model's logits, or the gradient of the loss, hold a NaN or infinity (its sign
            would be an arbitrary step).
    """
    model = unwrap_compiled(model)
    _check(images, labels)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer ≥ 1, got {steps!r}.")
    _check_max_batch(max_batch)
    eps_t = torch.as_tensor(eps, dtype=images.dtype, device=images.device)
    if (eps_t < 0).any():
        raise ValueError(f"`eps` must be ≥ 0, got {eps!r}.")
    size = eps_t / 4 if step_size is None else torch.as_tensor(step_size, dtype=images.dtype, device=images.device)
    bounds = None if clamp is None else [torch.as_tensor(v, dtype=images.dtype, device=images.device) for v in clamp]
    attacked = []
    with probing(model):
        for chunk in _chunk_slices(images.shape[0], max_batch):
            original = images[chunk].detach()
            adversarial = original.clone()
            for step in range(1, steps + 1):
                adversarial.requires_grad_(True)
                logits = model(adversarial)
                _check_finite(logits, f"`model` gave NaN or infinite logits at I-FGSM step {step}", chunk)
                loss = F.cross_entropy(logits, labels[chunk].to(images.device), reduction="sum")
                (gradient,) = torch.autograd.grad(loss, adversarial)
                _check_finite(gradient, f"the I-FGSM gradient at step {step} is NaN or infinite", chunk)
                with torch.no_grad():
                    adversarial = adversarial + size * gradient.sign()
                    adversarial = torch.max(torch.min(adversarial, original + eps_t), original - eps_t)
                    if bounds is not None:
                        adversarial = torch.max(torch.min(adversarial, bounds[1]), bounds[0])
                adversarial = adversarial.detach()
            attacked.append(adversarial)
    return torch.cat(attacked)


@computes_in_float32
def predictions(model: nn.Module, images: Tensor, *, batch_size: int = 256, max_batch: int | None = None) -> Tensor:
    """Top-1 predictions ``[N]`` in eval mode under ``no_grad`` (modes restored), ``batch_size`` images per
    forward (``max_batch``, when given, is the same setting under the name the other probes use).
    Computes in float32 with autocast off, whatever the caller's autocast.

    Raises:
        FloatingPointError: some images gave NaN or infinite logits (their argmax would look like a class).
    """
    _check_max_batch(batch_size, "batch_size")
    _check_max_batch(max_batch)
    size = batch_size if max_batch is None else max_batch
    model = unwrap_compiled(model)
    with probing(model), torch.no_grad():
        logits = [model(images[i : i + size]) for i in range(0, len(images), size)]
    broken = sum(int((~torch.isfinite(chunk.flatten(1)).all(dim=1)).sum()) for chunk in logits)
    if broken:
        raise FloatingPointError(
            f"`model` gave NaN or infinite logits for {broken} of {len(images)} images; their top-1 prediction "
            "would be meaningless (a diverged model?)."
        )
    return torch.cat([chunk.argmax(dim=1) for chunk in logits])


def cam_cosine(cams: Tensor, others: Tensor) -> Tensor:
    """Per-image cosine ``cos(CAM_a, CAM_b)`` ``[N]`` (methods §2: localisation agreement); 0 when a map is empty,
    NaN when a map holds a NaN or infinity."""
    a, b = cams.flatten(1).double(), others.flatten(1).double()
    finite = torch.isfinite(a).all(dim=1) & torch.isfinite(b).all(dim=1)
    a, b = a.nan_to_num(0.0, 0.0, 0.0), b.nan_to_num(0.0, 0.0, 0.0)
    norms = a.norm(dim=1) * b.norm(dim=1)
    cosine = torch.where(norms > 0, (a * b).sum(dim=1) / norms.clamp(min=1e-300), torch.zeros_like(norms))
    return torch.where(finite, cosine, torch.full_like(cosine, math.nan)).float()


def cam_wins(student_cosine: Tensor, reference_cosine: Tensor) -> Tensor:
    """Per image ``c_S > c_ref`` ``[N]`` (bool): the student's CAM is closer to the teacher's than the reference
    model's is."""
    return student_cosine > reference_cosine


def cam_win_rate(student_cosine: Tensor, reference_cosine: Tensor) -> float:
    """``mean(c_S > c_ref)`` (methods §2): how often the student's CAM is closer to the teacher's than the
    reference model's is (chance 0.5)."""
    return float(cam_wins(student_cosine, reference_cosine).float().mean())


def cam_energy_in_mask(cams: Tensor, masks: Tensor) -> Tensor:
    """Per-image fraction of CAM energy inside the foreground mask ``[N]`` (NaN for an all-zero map or a map
    that holds a NaN or infinity)."""
    inside = (cams * (masks > 0).to(cams.dtype)).flatten(1).sum(dim=1)
    total = cams.flatten(1).sum(dim=1)
    valid = (total > 0) & torch.isfinite(cams.flatten(1)).all(dim=1)
    return torch.where(valid, inside / total.clamp(min=1e-30), torch.full_like(total, math.nan))


def fooled(clean: Tensor, adversarial: Tensor) -> Tensor:
    """Per image, whether a model is fooled ``[N]`` (bool, methods §2): its prediction on the adversarial image
    differs from its own clean prediction."""
    return adversarial != clean


def adversarial_transfer(
    teacher_clean: Tensor, teacher_adversarial: Tensor, student_clean: Tensor, student_adversarial: Tensor
) -> tuple[float, float]:
    """``(transfer, teacher_fooling_rate)`` (methods §2): a model is fooled on an image when its prediction on
    the adversarial image differs from its own clean prediction; transfer = the fraction of the
    teacher-fooling images that also fool the student (NaN when the teacher is never fooled)."""
    teacher_fooled = fooled(teacher_clean, teacher_adversarial)
    student_fooled = fooled(student_clean, student_adversarial)
    rate = float(teacher_fooled.float().mean())
    if not teacher_fooled.any():
        return float("nan"), rate
    return float(student_fooled[teacher_fooled].float().mean()), rate


def prediction_unchanged(clean: Tensor, transformed: Tensor) -> Tensor:
    """Per image, whether the top-1 prediction survives the transform ``[N]`` (bool)."""
    return clean == transformed


def prediction_agreement(clean: Tensor, transformed: Tensor) -> float:
    """Invariance agreement (methods §2): the fraction of images whose top-1 prediction is unchanged."""
    return float(prediction_unchanged(clean, transformed).float().mean())


def _not_a_tensor(argument: str, layer: str, output: object) -> str:
    """The sentence refusing a CAM layer whose output is not one tensor (e.g. ``nn.MultiheadAttention``'s tuple)."""
    return (
        f"`{argument}`={layer!r} returns a {type(output).__name__}, not a tensor; a class-activation map needs one "
        "feature map or token tensor (name the block around it, or its output projection)."
    )


def _check_max_batch(value: object, name: str = "max_batch") -> None:
    """``max_batch`` (and ``predictions``' ``batch_size``): ``None`` or an integer ≥ 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{name}` must be an integer ≥ 1 (images per forward), got {value!r}.")


def _chunk_slices(count: int, max_batch: int | None) -> list[slice]:
    """Consecutive slices of at most ``max_batch`` of ``count`` images (one slice for ``None``; at least one)."""
    size = max(count, 1) if max_batch is None else max_batch
    return [slice(start, start + size) for start in range(0, max(count, 1), size)]


def _check_finite(values: Tensor, what: str, chunk: slice) -> None:
    """Raise ``FloatingPointError`` naming the images (global indices) whose ``values`` are not all finite."""
    broken = (~torch.isfinite(values.detach().flatten(1)).all(dim=1)).nonzero().flatten()
    if len(broken):
        indices = [int(i) + (chunk.start or 0) for i in broken[:10]]
        raise FloatingPointError(
            f"{what} for {len(broken)} image(s) (indices {indices}{'…' if len(broken) > 10 else ''}); no "
            "adversarial image can be built from them (a diverged model?)."
        )


def _check(images: Tensor, targets: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"`images` must be a 4-D float tensor [N, C, H, W], got {getattr(images, 'shape', images)!r}.")
    if not isinstance(targets, Tensor) or targets.shape != (images.shape[0],):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(
            f"the labels must be a tensor of shape ({images.shape[0]},), one class per image, got {shape}."
        )
