from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from kd_probe.core.units import Tokens
from kd_probe.models import TokenCNN, TokenTransformer

VOCAB = 20


def _models() -> list[nn.Module]:
    torch.manual_seed(0)
    return [
        TokenTransformer(VOCAB, num_classes=3, dim=16, depth=2, heads=2, max_length=12).eval(),
        TokenCNN(VOCAB, num_classes=3, dim=16, widths=(8, 8), kernel_size=3).eval(),
    ]


def _tokens() -> Tensor:
    """Three right-padded sequences of lengths 8, 3 and 1 (padding id 0), ``[3, 8]``."""
    tokens = torch.randint(1, VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))
    tokens[1, 3:] = 0
    tokens[2, 1:] = 0
    return tokens


def _outputs(model: nn.Module, tokens: Tensor, names: list[str]) -> dict[str, Tensor]:
    seen: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out)) for n in names]
    model(tokens)
    for handle in handles:
        handle.remove()
    return seen


def test_logits_and_readable_layers_with_their_shapes() -> None:
    transformer, cnn = _models()
    tokens = _tokens()
    seen = _outputs(transformer, tokens, ["embedding", "blocks.0", "blocks.1", "norm", "pool", "head"])
    assert [tuple(seen[n].shape) for n in seen] == [(3, 8, 16)] * 4 + [(3, 16), (3, 3)]
    assert {"blocks.0.attention", "blocks.1.mlp.fc1", "embedding.tokens", "embedding.positions"} <= set(
        dict(transformer.named_modules())
    )
    seen = _outputs(cnn, tokens, ["embedding", "convs.conv1", "convs.relu1", "convs.conv2", "convs.relu2", "head"])
    assert [tuple(seen[n].shape) for n in seen] == [(3, 8, 16), (3, 8, 8), (3, 8, 8), (3, 8, 8), (3, 8, 8), (3, 3)]
    assert not any(getattr(m, "inplace", False) for m in cnn.modules() if isinstance(m, nn.ReLU))


def _noise_on_padding(tokens: Tensor) -> Callable[[nn.Module, object, Tensor], Tensor]:
    def hook(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
        return output + 100 * torch.randn_like(output) * (tokens == 0).unsqueeze(-1)

    return hook


@pytest.mark.parametrize("index", [0, 1])
def test_padding_does_not_change_the_logits(index: int) -> None:
    model, tokens = _models()[index], _tokens()
    with torch.no_grad():
        logits = model(tokens)
        longer = torch.cat([tokens, torch.zeros(3, 4, dtype=torch.long)], 1)  # more padding
        torch.testing.assert_close(model(longer), logits)
        handle = model.get_submodule("embedding").register_forward_hook(
            _noise_on_padding(tokens)
        )  # other vectors at the padding
        try:
            torch.testing.assert_close(model(tokens), logits)
        finally:
            handle.remove()
        torch.testing.assert_close(model(tokens[1:2, :3]), logits[1:2])  # the sequence alone, unpadded


@pytest.mark.parametrize("index", [0, 1])
def test_the_embedding_output_a_hook_returns_is_what_the_network_uses(index: int) -> None:
    model, tokens = _models()[index], _tokens()
    with torch.no_grad():
        logits = model(tokens)
        shift = torch.linspace(-1.0, 1.0, 16)  # the same vector at every token; not c·ones, which LayerNorm removes
        handle = model.get_submodule("embedding").register_forward_hook(lambda _m, _i, out: out + shift)
        try:
            shifted = model(tokens)
        finally:
            handle.remove()
    assert (shifted - logits).abs().amax(1).gt(1e-3).all()


@pytest.mark.parametrize("index", [0, 1])
def test_gradients_reach_the_embedding_output_on_tokens_only(index: int) -> None:
    model, tokens = _models()[index], _tokens()
    captured: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
        output = output.detach().requires_grad_(True)  # a leaf, as the σ engine's noise makes one
        captured.append(output)
        return output

    handle = model.get_submodule("embedding").register_forward_hook(keep)
    try:
        model(tokens)[:, 1].sum().backward()
    finally:
        handle.remove()
    grad = captured[0].grad
    assert grad is not None
    norms = grad.norm(dim=-1)
    assert (norms * (tokens != 0)).sum(1).gt(0).all() and (norms[tokens == 0] == 0).all()
    if isinstance(model, TokenTransformer):  # attention spreads it to every token (max-pooling does not)
        assert (norms[tokens != 0] > 0).all()


@pytest.mark.parametrize("index", [0, 1])
def test_the_token_units_of_the_sigma_engine_bind_to_the_models(index: int) -> None:
    model, tokens = _models()[index], _tokens()
    bound = Tokens(embedding="embedding", pad_id=0).bind(model, tokens)
    assert bound.noise_shape == (8, 16)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TokenTransformer(0), "TokenTransformer needs positive sizes, got vocab_size=0, num_classes=2, dim=32"),
        (lambda: TokenTransformer(10, dim=30, heads=4), "TokenTransformer needs `heads` to divide `dim`, got dim=30"),
        (lambda: TokenTransformer(10, pad_id=10), r"`pad_id` to be a token id in \[0, 10\), got 10."),
        (lambda: TokenCNN(10, widths=()), r"TokenCNN needs positive sizes, .*widths=\(\)"),
        (lambda: TokenCNN(10, kernel_size=4), "TokenCNN needs an odd `kernel_size`"),
        (lambda: TokenTransformer(10, max_length=4)(torch.ones(1, 5, dtype=torch.long)), "at most `max_length`=4"),
        (
            lambda: TokenCNN(10)(torch.ones(2, 5)),
            r"expects token ids \[N, T\] \(an integer tensor\), got a 2-D torch.float32",
        ),
    ],
)
def test_bad_sizes_and_inputs_are_refused_in_one_sentence(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]
