import pytest
import torch

from kd_probe.core.tokens import patch_grid, token_grid


def test_feature_maps_pass_through_unchanged() -> None:
    maps = torch.randn(2, 8, 4, 4)
    assert token_grid(maps, (16, 16), batch=2) is maps


@pytest.mark.parametrize(
    ("tokens", "image_size", "prefix", "grid"),
    [(16, (32, 32), 0, (4, 4)), (17, (32, 32), 1, (4, 4)), (33, (16, 32), 1, (4, 8)), (50, (28, 28), 1, (7, 7))],
)
def test_the_prefix_is_inferred_and_the_grid_follows_the_aspect_ratio(
    tokens: int, image_size: tuple[int, int], prefix: int, grid: tuple[int, int]
) -> None:
    activation = torch.randn(2, tokens, 5)
    maps = token_grid(activation, image_size, batch=2)
    assert tuple(maps.shape) == (2, 5, *grid)
    # patch token p (row-major) is the map's position (p // w, p % w)
    torch.testing.assert_close(maps[1, :, 1, 2], activation[1, prefix + grid[1] + 2])


def test_explicit_prefix_tokens_and_sequence_first_layouts() -> None:
    tokens = torch.randn(3, 2 + 16, 4)  # class and distillation tokens, then 4 × 4 patches
    maps = token_grid(tokens, (8, 8), batch=3, prefix_tokens=2)
    torch.testing.assert_close(maps[:, :, 0, 0], tokens[:, 2])
    sequence_first = tokens.transpose(0, 1)  # [T, N, D], nn.TransformerEncoderLayer's default
    torch.testing.assert_close(token_grid(sequence_first, (8, 8), batch=3, prefix_tokens=2), maps)


def test_gradients_flow_back_to_the_tokens() -> None:
    tokens = torch.randn(2, 17, 3, requires_grad=True)
    token_grid(tokens, (8, 8), batch=2)[:, :, 0, 1].sum().backward()
    assert tokens.grad is not None and tokens.grad[:, 2].eq(1).all() and tokens.grad[:, [0, 1, 3]].eq(0).all()


def test_what_cannot_be_a_grid_is_refused_in_one_sentence() -> None:
    with pytest.raises(ValueError, match=r"`layer`='blocks.0' outputs 18 tokens, which do not tile the 8×8 images"):
        token_grid(torch.randn(2, 18, 4), (8, 8), batch=2, layer="blocks.0")
    with pytest.raises(ValueError, match=r"after dropping `prefix_tokens`=1 do not tile"):
        token_grid(torch.randn(2, 16, 4), (8, 8), batch=2, prefix_tokens=1)
    with pytest.raises(ValueError, match=r"`prefix_tokens` must be an integer in \[0, 16\).*got -1"):
        token_grid(torch.randn(2, 16, 4), (8, 8), batch=2, prefix_tokens=-1)
    with pytest.raises(ValueError, match=r"`layer`='head' outputs shape \(2, 10\); a class-activation map needs"):
        token_grid(torch.randn(2, 10), (8, 8), batch=2, layer="head")
    with pytest.raises(ValueError, match=r"outputs tokens of shape \(5, 17, 4\) for 2 images"):
        token_grid(torch.randn(5, 17, 4), (8, 8), batch=2)
    assert patch_grid(0, (8, 8)) is None and patch_grid(12, (8, 8)) is None and patch_grid(12, (6, 8)) == (3, 4)
