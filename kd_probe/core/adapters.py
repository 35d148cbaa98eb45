"""Adapters that map a student feature to the shape of a teacher feature (pure torch)."""

from __future__ import annotations

from torch import nn

__all__ = ["build_adapter"]


def build_adapter(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], *, pair: str = ""
) -> nn.Module | None:
    """A trainable adapter from a student feature shape to a teacher feature shape, or ``None``.

    Shapes include the batch dimension. No adapter is needed when the shapes match. Feature maps
    ``[B, C, H, W]`` of equal spatial size get a 1×1 convolution ``C_s → C_t``; vectors ``[B, D]`` get
    a linear layer ``D_s → D_t``. Anything else is refused with both shapes in the message.

    Args:
        student_shape: shape of the student feature.
        teacher_shape: shape of the teacher feature.
        pair: ``"student.layer -> teacher.layer"``, used in error messages.

    Example::

        >>> build_adapter((8, 16, 4, 4), (8, 32, 4, 4))
        Conv2d(16, 32, kernel_size=(1, 1), stride=(1, 1), bias=False)
        >>> build_adapter((8, 10), (8, 10)) is None
        True
    """
    student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
    if student_shape == teacher_shape:
        return None
    where = f" for feature pair {pair}" if pair else ""
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        if student_shape[2:] != teacher_shape[2:]:
            raise ValueError(
                f"feature maps{where} have different spatial sizes: student {student_shape}, teacher "
                f"{teacher_shape}; pick layers whose outputs have the same height and width."
            )
        return nn.Conv2d(student_shape[1], teacher_shape[1], kernel_size=1, bias=False)
    if len(student_shape) == 2 and len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    raise ValueError(
        f"features{where} cannot be adapted: student {student_shape}, teacher {teacher_shape}; expected "
        "two feature maps [B, C, H, W] of the same size or two vectors [B, D]."
    )
