"""Adapters that map a student feature to the shape of a teacher feature (pure torch)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RESIZE_MODES", "Resize", "build_adapter"]

RESIZE_MODES = ("pool", "interpolate")


class Resize(nn.Module):
    """Resize feature maps ``[B, C, h, w]`` to a fixed ``size = (H, W)`` (no parameters).

    ``mode="pool"``: adaptive average pooling (each output cell averages the input cells it covers; when
    enlarging, cells are repeated); ``mode="interpolate"``: bilinear interpolation (``align_corners=False``).
    """

    def __init__(self, size: tuple[int, int], mode: str = "pool") -> None:
        super().__init__()
        if mode not in RESIZE_MODES:
            raise ValueError(f"`resize` must be one of {RESIZE_MODES} or None, got {mode!r}.")
        self.size, self.mode = (int(size[0]), int(size[1])), mode

    def forward(self, features: Tensor) -> Tensor:
        if self.mode == "pool":
            return F.adaptive_avg_pool2d(features, self.size)
        return F.interpolate(features, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode!r}"


def build_adapter(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], *, pair: str = "", resize: str | None = None
) -> nn.Module | None:
    """A trainable adapter from a student feature shape to a teacher feature shape, or ``None``.

    Shapes include the batch dimension. No adapter is needed when the shapes match. Feature maps
    ``[B, C, H, W]`` of equal spatial size get a 1×1 convolution ``C_s → C_t``; vectors ``[B, D]`` get
    a linear layer ``D_s → D_t``, token sequences ``[B, T, D]`` of the same length a linear layer applied to each
    token. Feature maps of different spatial sizes are refused (both shapes in the
    message) unless ``resize`` says how to match the student's height and width to the teacher's before the
    1×1 projection: ``"pool"`` (adaptive average pooling) or ``"interpolate"`` (bilinear), see :class:`Resize`.

    Args:
        student_shape: shape of the student feature.
        teacher_shape: shape of the teacher feature.
        pair: ``"student.layer -> teacher.layer"``, used in error messages.
        resize: ``None`` (refuse different spatial sizes), ``"pool"`` or ``"interpolate"``.

    Example::

        >>> build_adapter((8, 16, 4, 4), (8, 32, 4, 4))
        Conv2d(16, 32, kernel_size=(1, 1), stride=(1, 1), bias=False)
        >>> build_adapter((8, 10), (8, 10)) is None
        True
        >>> build_adapter((8, 24, 8, 8), (8, 512, 2, 2), resize="pool")
        Sequential(
          (0): Resize(size=(2, 2), mode='pool')
          (1): Conv2d(24, 512, kernel_size=(1, 1), stride=(1, 1), bias=False)
        )
    """
    if resize is not None and resize not in RESIZE_MODES:
        raise ValueError(f"`feature_resize` must be one of {RESIZE_MODES} or None, got {resize!r}.")
    student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
    if student_shape == teacher_shape:
        return None
    where = f" for feature pair {pair}" if pair else ""
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        projection = nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False)
        if student_shape[2:] == teacher_shape[2:]:
            return projection
        if resize is None:
            raise ValueError(
                f"feature maps{where} have different spatial sizes: student {student_shape}, teacher "
                f"{teacher_shape}; pick layers whose outputs have the same height and width, or pass "
                "`feature_resize='pool'` or `'interpolate'` to resize the student's maps."
            )
        resized = Resize(teacher_shape[2:], resize)  # type: ignore[arg-type]
        return resized if student_shape[1] == teacher_shape[1] else nn.Sequential(resized, projection)
    if len(student_shape) == 2 and len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    if len(student_shape) == 3 and len(teacher_shape) == 3 and student_shape[1] == teacher_shape[1]:
        return nn.Linear(student_shape[2], teacher_shape[2])  # the same tokens, another width: per token
    raise ValueError(
        f"features{where} cannot be adapted: student {student_shape}, teacher {teacher_shape}; expected "
        "two feature maps [B, C, H, W] (of the same size, or with `feature_resize`), two vectors [B, D] or two "
        "token sequences [B, T, D] of the same length."
    )
