"""What gets distilled [WK]: Grad-CAM, I-FGSM and the teacher–student agreement scores (spec §2), pure torch.

Every function leaves the model as it found it (spec §4): eval mode only for the duration of the call,
hooks removed in ``finally``, gradients taken with ``torch.autograd.grad`` so no parameter's ``.grad`` is
touched, and frozen models work because the input is made to require grad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_probe.core.layers import probing, resolve_layer

__all__ = [
    "adversarial_transfer",
    "cam_cosine",
    "cam_energy_in_mask",
    "cam_win_rate",
    "grad_cam",
    "ifgsm",
    "prediction_agreement",
    "predictions",
    "weighted_activations",
]


def grad_cam(model: nn.Module, images: Tensor, targets: Tensor, *, layer: str) -> Tensor:
    """Grad-CAM ``[N, H, W]`` of class ``targets[i]`` for image ``i`` at ``layer`` (spec §2).

    ``α_k = mean_{u,v} ∂y_c/∂A_k`` over the layer's activations ``A``; map ``ReLU(Σ_k α_k A_k)``, bilinearly
    upsampled to the input size (not normalised: compare maps with :func:`cam_cosine`).

    Example::

        >>> from kd_probe.models import VGG
        >>> cams = grad_cam(VGG(num_classes=3), torch.randn(2, 3, 16, 16), torch.tensor([0, 2]), layer="features.relu2")
        >>> tuple(cams.shape), bool((cams >= 0).all())
        ((2, 16, 16), True)
    """
    module = resolve_layer(model, layer)
    _check(images, targets)
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, output: captured.append(output))
    try:
        with probing(model):
            inputs = images.detach().clone().requires_grad_(True)  # frozen models still give a graph
            logits = model(inputs)
            activation = captured[0]
            score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
            (gradient,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    return F.interpolate(
        weighted_activations(activation, gradient)[:, None],
        size=images.shape[-2:],
        mode="bilinear",
        align_corners=False,
    )[:, 0]


def weighted_activations(activation: Tensor, gradient: Tensor) -> Tensor:
    """The Grad-CAM map at the layer's resolution ``[N, h, w]`` (spec §2, and UniCAM in §3):
    ``α_k = mean_{u,v} ∂s/∂A_k``, ``ReLU(Σ_k α_k A_k)``, detached."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activation).sum(dim=1)).detach()


def ifgsm(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    eps: float | Tensor,
    steps: int = 5,
    step_size: float | Tensor | None = None,
    clamp: tuple[float | Tensor, float | Tensor] | None = None,
) -> Tensor:
    """Untargeted iterative FGSM (spec §2): ``steps`` signed-gradient ascent steps of size ``step_size``
    (default ``eps / 4``) on the cross-entropy to ``labels``, projected onto the L∞ ball of radius ``eps``
    around ``images`` and into ``clamp = (low, high)``. ``eps``, ``step_size`` and ``clamp`` are in the units
    of ``images`` (tensors broadcast, e.g. per channel for normalised inputs).
    """
    _check(images, labels)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be an integer ≥ 1, got {steps!r}.")
    eps_t = torch.as_tensor(eps, dtype=images.dtype, device=images.device)
    if (eps_t < 0).any():
        raise ValueError(f"`eps` must be ≥ 0, got {eps!r}.")
    size = eps_t / 4 if step_size is None else torch.as_tensor(step_size, dtype=images.dtype, device=images.device)
    original = images.detach()
    adversarial = original.clone()
    with probing(model):
        for _ in range(steps):
            adversarial.requires_grad_(True)
            loss = F.cross_entropy(model(adversarial), labels.to(images.device))
            (gradient,) = torch.autograd.grad(loss, adversarial)
            with torch.no_grad():
                adversarial = adversarial + size * gradient.sign()
                adversarial = torch.max(torch.min(adversarial, original + eps_t), original - eps_t)
                if clamp is not None:
                    low, high = (torch.as_tensor(v, dtype=images.dtype, device=images.device) for v in clamp)
                    adversarial = torch.max(torch.min(adversarial, high), low)
            adversarial = adversarial.detach()
    return adversarial


def predictions(model: nn.Module, images: Tensor, *, batch_size: int = 256) -> Tensor:
    """Top-1 predictions ``[N]`` in eval mode under ``no_grad`` (modes restored)."""
    with probing(model), torch.no_grad():
        return torch.cat([model(images[i : i + batch_size]).argmax(dim=1) for i in range(0, len(images), batch_size)])


def cam_cosine(cams: Tensor, others: Tensor) -> Tensor:
    """Per-image cosine ``cos(CAM_a, CAM_b)`` ``[N]`` (spec §2: localisation agreement); 0 when a map is empty."""
    a, b = cams.flatten(1).double(), others.flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(dim=1) / norms.clamp(min=1e-300), torch.zeros_like(norms)).float()


def cam_win_rate(student_cosine: Tensor, reference_cosine: Tensor) -> float:
    """``mean(c_S > c_ref)`` (spec §2): how often the student's CAM is closer to the teacher's than the
    reference model's is (chance 0.5)."""
    return float((student_cosine > reference_cosine).float().mean())


def cam_energy_in_mask(cams: Tensor, masks: Tensor) -> Tensor:
    """Per-image fraction of CAM energy inside the foreground mask ``[N]`` (NaN for an all-zero map)."""
    inside = (cams * (masks > 0).to(cams.dtype)).flatten(1).sum(dim=1)
    total = cams.flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-30), torch.full_like(total, float("nan")))


def adversarial_transfer(
    teacher_clean: Tensor, teacher_adversarial: Tensor, student_clean: Tensor, student_adversarial: Tensor
) -> tuple[float, float]:
    """``(transfer, teacher_fooling_rate)`` (spec §2): a model is fooled on an image when its prediction on
    the adversarial image differs from its own clean prediction; transfer = the fraction of the
    teacher-fooling images that also fool the student (NaN when the teacher is never fooled)."""
    teacher_fooled = teacher_adversarial != teacher_clean
    student_fooled = student_adversarial != student_clean
    rate = float(teacher_fooled.float().mean())
    if not teacher_fooled.any():
        return float("nan"), rate
    return float(student_fooled[teacher_fooled].float().mean()), rate


def prediction_agreement(clean: Tensor, transformed: Tensor) -> float:
    """Invariance agreement (spec §2): the fraction of images whose top-1 prediction is unchanged."""
    return float((clean == transformed).float().mean())


def _check(images: Tensor, targets: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"`images` must be a 4-D float tensor [N, C, H, W], got {getattr(images, 'shape', images)!r}.")
    if not isinstance(targets, Tensor) or targets.shape != (images.shape[0],):
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(
            f"the labels must be a tensor of shape ({images.shape[0]},), one class per image, got {shape}."
        )
