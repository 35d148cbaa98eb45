"""Transformer token sequences as feature maps, for Grad-CAM and UniCAM on ViT-style layers (pure torch).

A ViT block outputs tokens ``[N, P + h·w, D]``: ``P`` leading tokens that belong to no patch (the class
token, distillation or register tokens), then one token per patch in row-major order. Grad-CAM's weights
(methods §2) and UniCAM's (methods §3) average gradients over the spatial positions of a feature map, so the patch
tokens are laid out as the map ``[N, D, h, w]`` they stand for and the leading tokens are left out.
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["check_prefix_tokens", "patch_grid", "token_grid"]


def check_prefix_tokens(value: object) -> None:
    """``prefix_tokens`` of the CAM probes: ``None`` (infer) or the number of leading non-patch tokens."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(
            f"`prefix_tokens` must be None (infer) or an integer ≥ 0 (class/register tokens before the patch "
            f"tokens), got {value!r}."
        )


def token_grid(
    activation: Tensor,
    image_size: tuple[int, ...],
    *,
    batch: int,
    prefix_tokens: int | None = None,
    layer: str = "",
    argument: str = "layer",
) -> Tensor:
    """A layer's output as a feature map ``[N, C, h, w]``: feature maps unchanged, token sequences reshaped.

    Tokens ``[N, T, D]`` (or sequence-first ``[T, N, D]``, as ``nn.Transformer`` layers give by default) become
    ``[N, D, h, w]`` after dropping the first ``prefix_tokens`` tokens. The grid ``h × w`` has the aspect ratio
    of the images (patches tile the image), so ``h·w = T − prefix_tokens`` and ``h·W = w·H``. With
    ``prefix_tokens=None`` it is inferred: no leading token when all ``T`` tokens tile the image, one (a class
    token) when ``T − 1`` do. The result is a view of ``activation``, so gradients map back to the tokens.

    Args:
        activation: the layer's output.
        image_size: ``(H, W)`` of the images fed to the model.
        batch: the number of images (to tell batch-first from sequence-first tokens).
        prefix_tokens: leading tokens that are not patches (``None``: infer 0 or 1).
        layer: the layer's name, for messages.
        argument: the user-facing argument naming the layer, for messages.

    Raises:
        ValueError: the output is neither a feature map nor tokens, or its tokens do not tile the image.

    Example::

        >>> tokens = torch.randn(2, 1 + 4 * 8, 16)  # a class token and a 4 × 8 grid of patches
        >>> tuple(token_grid(tokens, (32, 64), batch=2).shape)
        (2, 16, 4, 8)
    """
    shape = tuple(activation.shape)
    if activation.dim() == 4:
        return activation
    if activation.dim() != 3:
        raise ValueError(
            f"`{argument}`={layer!r} outputs shape {shape}; a class-activation map needs a feature map "
            "[N, C, H, W] or transformer tokens [N, T, D] (pick a convolution or a transformer block)."
        )
    if shape[0] != batch and shape[1] == batch:
        activation = activation.transpose(0, 1)  # sequence-first tokens
    elif shape[0] != batch:
        raise ValueError(
            f"`{argument}`={layer!r} outputs tokens of shape {shape} for {batch} images; expected [N, T, D] or "
            f"[T, N, D] with N = {batch}."
        )
    count = activation.shape[1]
    if prefix_tokens is not None and (
        isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or not 0 <= prefix_tokens < count
    ):
        raise ValueError(
            f"`prefix_tokens` must be an integer in [0, {count}) (leading tokens that are not patches), "
            f"got {prefix_tokens!r}."
        )
    for prefix in (0, 1) if prefix_tokens is None else (prefix_tokens,):
        grid = patch_grid(count - prefix, image_size)
        if grid is not None:
            return activation[:, prefix:].transpose(1, 2).reshape(activation.shape[0], -1, *grid)
    told = "" if prefix_tokens is None else f" after dropping `prefix_tokens`={prefix_tokens}"
    raise ValueError(
        f"`{argument}`={layer!r} outputs {count} tokens, which{told} do not tile the {image_size[-2]}×"
        f"{image_size[-1]} images as a grid of patches; pass the right `prefix_tokens` (the number of class/register tokens "
        "before the patch tokens)."
    )


def patch_grid(count: int, image_size: tuple[int, ...]) -> tuple[int, int] | None:
    """``(h, w)`` with ``h·w = count`` and the aspect ratio of ``image_size`` (``h·W = w·H``), or ``None``."""
    height, width = image_size[-2:]
    if count < 1 or height < 1 or width < 1:
        return None
    rows = round(math.sqrt(count * height / width))
    for h in (rows - 1, rows, rows + 1):
        if h >= 1 and count % h == 0 and h * width == (count // h) * height:
            return h, count // h
    return None
