"""Small token-sequence classifiers with readable layer names (pure torch): ``TokenTransformer`` and ``TokenCNN``.

Both take token ids ``[N, T]`` and return logits ``[N, num_classes]``. The padding mask is derived inside as
``tokens != pad_id``, and padding never changes the logits. Both have a module named ``embedding`` whose output
``[N, T, dim]`` is the per-token input representation; everything after it uses its returned value, so a
forward hook that returns a modified tensor (the knowledge-point analysis adds noise there, [KP-J]) changes
what the rest of the network sees, and the logits are differentiable with respect to it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MaskedPool", "TokenCNN", "TokenEmbedding", "TokenTransformer", "TransformerBlock", "sinusoidal_positions"]

_POSITION_SCALE = 3.0  # initial size of the position embedding relative to the sinusoidal encoding


def _check_sizes(owner: str, **sizes: int | Sequence[int]) -> None:
    """One sentence naming every size when one is not a positive int (or a sequence of sizes is empty)."""
    groups = [tuple(v) if isinstance(v, Sequence) else (v,) for v in sizes.values()]
    if not all(
        group and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in group) for group in groups
    ):
        described = ", ".join(f"{k}={tuple(v) if isinstance(v, Sequence) else v!r}" for k, v in sizes.items())
        raise ValueError(f"{owner} needs positive sizes, got {described}.")


def _check_tokens(tokens: Tensor, owner: str, max_length: int | None = None) -> None:
    if tokens.dim() != 2 or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(
            f"{owner} expects token ids [N, T] (an integer tensor), got a {tokens.dim()}-D {tokens.dtype} tensor "
            f"of shape {tuple(tokens.shape)}."
        )
    if max_length is not None and tokens.shape[1] > max_length:
        raise ValueError(
            f"{owner} was built for sequences of at most `max_length`={max_length} tokens, got {tokens.shape[1]}."
        )


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """The sinusoidal position encoding ``[length, dim]`` of "Attention is all you need": ``sin`` in the even
    and ``cos`` in the odd columns, wavelengths from 2π to 10000·2π."""
    angle = torch.arange(length, dtype=torch.float32).unsqueeze(1) / 10000 ** (torch.arange(0, dim, 2) / dim)
    encoding = torch.zeros(length, dim)
    encoding[:, 0::2], encoding[:, 1::2] = torch.sin(angle), torch.cos(angle[:, : dim // 2])
    return encoding


class TokenEmbedding(nn.Module):
    """Token embedding plus a learned position embedding: ids ``[N, T]`` → vectors ``[N, T, dim]``
    (``tokens``, ``positions``; no position embedding when ``max_length`` is None). The positions start from
    the sinusoidal encoding times 3 (the token vectors start from N(0, 1)): a clear position signal makes
    attending to a neighbour, such as the ``not`` before a word, quick to learn."""

    def __init__(self, vocab_size: int, dim: int, max_length: int | None, pad_id: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.positions: nn.Embedding | None = None
        if max_length is not None:
            self.positions = nn.Embedding(max_length, dim)
            with torch.no_grad():
                self.positions.weight.copy_(_POSITION_SCALE * sinusoidal_positions(max_length, dim))

    def forward(self, tokens: Tensor) -> Tensor:
        vectors = self.tokens(tokens)
        if self.positions is None:
            return vectors
        return vectors + self.positions(torch.arange(tokens.shape[1], device=tokens.device))


class MaskedPool(nn.Module):
    """Pooling over the non-padding tokens: ``mean`` of ``[N, T, C]`` over ``T``, or ``max`` of ``[N, C, T]``
    over ``T``; called as ``pool(features, mask)`` with ``mask`` ``[N, T]`` true on tokens."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("mean", "max"):
            raise ValueError(f"`mode` must be 'mean' or 'max', got {mode!r}.")
        self.mode = mode

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        if self.mode == "mean":
            weights = mask.to(features.dtype).unsqueeze(-1)
            return (features * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return features.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(dim=-1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: ``x + attention(norm1(x))``, then ``x + mlp(norm2(x))``; padding keys
    are masked out of the attention. Output ``[N, T, dim]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(fc1=nn.Linear(dim, mlp_ratio * dim), act=nn.GELU(), fc2=nn.Linear(mlp_ratio * dim, dim))
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        queries = self.norm1(x)
        attended, _ = self.attention(queries, queries, queries, key_padding_mask=~mask, need_weights=False)
        x = x + attended
        return x + self.mlp(self.norm2(x))


class TokenTransformer(nn.Module):
    """A small transformer encoder for sequence classification.

    Layers: ``embedding`` (token + learned position embedding, output ``[N, T, dim]``), ``blocks.0``, …,
    ``blocks.{depth-1}`` (pre-norm encoder blocks, each output ``[N, T, dim]``; inside, ``blocks.i.attention``,
    ``blocks.i.mlp.fc1``, …), ``norm`` (final LayerNorm, ``[N, T, dim]``), ``pool`` (mean over the non-padding
    tokens, ``[N, dim]``) and ``head`` (linear, the logits). Padding tokens (``pad_id``) are masked out of every
    attention and of the pooling, so they do not change the logits.

    Args:
        vocab_size: number of token ids.
        num_classes: number of output logits.
        dim: width of the token vectors.
        depth: number of encoder blocks.
        heads: attention heads per block (must divide ``dim``).
        max_length: longest sequence the position embedding covers.
        pad_id: the padding token id.

    Example::

        >>> net = TokenTransformer(vocab_size=50, dim=32, depth=2, heads=2)
        >>> net(torch.tensor([[5, 7, 9, 0], [3, 0, 0, 0]])).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        max_length: int = 64,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(
            "TokenTransformer",
            vocab_size=vocab_size,
            num_classes=num_classes,
            dim=dim,
            depth=depth,
            heads=heads,
            max_length=max_length,
        )
        if dim % heads:
            raise ValueError(f"TokenTransformer needs `heads` to divide `dim`, got dim={dim} and heads={heads}.")
        _check_pad_id("TokenTransformer", pad_id, vocab_size)
        self.pad_id, self.max_length = pad_id, max_length
        self.embedding = TokenEmbedding(vocab_size, dim, max_length, pad_id)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pool = MaskedPool("mean")
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        _check_tokens(tokens, "TokenTransformer", self.max_length)
        mask = tokens != self.pad_id
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.pool(self.norm(x), mask))


class TokenCNN(nn.Module):
    """A 1-D CNN over token sequences: embeddings, same-length convolutions, max-pooling over the tokens.

    Layers: ``embedding`` (token embedding, output ``[N, T, dim]``), then over ``[N, C, T]``: ``convs.conv1``,
    ``convs.relu1``, ``convs.conv2``, ``convs.relu2``, … (ReLUs not in-place), ``pool`` (max over the
    non-padding tokens, ``[N, C]``) and ``head`` (linear, the logits). The input of every convolution is zero
    at the padding positions, and the pooling skips them, so padding does not change the logits.

    Args:
        vocab_size: number of token ids.
        num_classes: number of output logits.
        dim: width of the token vectors.
        widths: channels of each convolution; its length is the number of convolutions.
        kernel_size: odd kernel size of the convolutions (tokens seen at once).
        pad_id: the padding token id.

    Example::

        >>> net = TokenCNN(vocab_size=50, dim=32, widths=(32, 32))
        >>> net(torch.tensor([[5, 7, 9, 0], [3, 0, 0, 0]])).shape
        torch.Size([2, 2])
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        dim: int = 32,
        widths: Sequence[int] = (32, 32),
        kernel_size: int = 3,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        _check_sizes(
            "TokenCNN", vocab_size=vocab_size, num_classes=num_classes, dim=dim, widths=widths, kernel_size=kernel_size
        )
        if kernel_size % 2 == 0:
            raise ValueError(f"TokenCNN needs an odd `kernel_size` (same-length convolutions), got {kernel_size}.")
        _check_pad_id("TokenCNN", pad_id, vocab_size)
        self.pad_id = pad_id
        self.embedding = TokenEmbedding(vocab_size, dim, None, pad_id)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = dim
        for index, width in enumerate(widths, start=1):
            layers[f"conv{index}"] = nn.Conv1d(channels, width, kernel_size, padding=kernel_size // 2)
            layers[f"relu{index}"] = nn.ReLU()
            channels = width
        self.convs = nn.Sequential(layers)
        self.pool = MaskedPool("max")
        self.head = nn.Linear(channels, num_classes)
        for module in self.convs:
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, tokens: Tensor) -> Tensor:
        _check_tokens(tokens, "TokenCNN")
        mask = tokens != self.pad_id
        keep = mask.unsqueeze(1)  # [N, 1, T]
        x = self.embedding(tokens).transpose(1, 2)
        for module in self.convs:
            x = module(x * keep if isinstance(module, nn.Conv1d) else x)
        return self.head(self.pool(x, mask))


def _check_pad_id(owner: str, pad_id: int, vocab_size: int) -> None:
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < vocab_size:
        raise ValueError(f"{owner} needs `pad_id` to be a token id in [0, {vocab_size}), got {pad_id!r}.")
