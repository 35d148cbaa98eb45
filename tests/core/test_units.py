"""Token and point-cloud units of the σ engine (spec §1.1, [KP-J]): known answers, invariances, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_probe import ImageGrid, Points, Tokens, count_knowledge_points, estimate_sigma_maps

FAST = dict(samples=8, steps=30, lam=7.0)


class HalfBlindTokens(nn.Module):
    """Embeds tokens, mixes each token's vector, then zeroes the second half of every sequence at `keep`."""

    def __init__(self, vocab: int = 20, dim: int = 6, length: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.keep = nn.Identity()
        self.register_buffer("visible", (torch.arange(length) < length // 2).float()[None, :, None])
        self.head = nn.Linear(dim, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.keep(torch.tanh(self.mix(self.embedding(tokens))) * self.visible)
        return self.head(hidden.mean(dim=1))


class RadiusBlindPoints(nn.Module):
    """A per-point MLP whose features are zero for points farther than `radius` from the origin."""

    def __init__(self, radius: float = 2.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.radius = radius
        self.mlp = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16))
        self.keep = nn.Identity()
        self.head = nn.Linear(16, 3)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        near = (points.detach().norm(dim=-1, keepdim=True) < self.radius).float()
        return self.head(self.keep(self.mlp(points) * near).max(dim=1).values)


def _tokens(count: int = 4, length: int = 8, pad_from: list[int] | None = None) -> torch.Tensor:
    tokens = torch.randint(1, 20, (count, length), generator=torch.Generator().manual_seed(1))
    for row, start in enumerate(pad_from or []):
        tokens[row, start:] = 0
    return tokens


def _clouds(count: int = 3, near: int = 6, far: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    inside = torch.nn.functional.normalize(torch.randn(count, near, 3, generator=g), dim=-1) * 0.8
    outside = torch.nn.functional.normalize(torch.randn(count, far, 3, generator=g), dim=-1) * 10.0
    return torch.cat([inside, outside], dim=1)


@pytest.mark.parametrize("method", ["faithful", "secant"])
def test_a_token_model_blind_to_the_second_half_has_no_knowledge_point_there(method: str) -> None:
    tokens = _tokens()
    maps = estimate_sigma_maps(
        HalfBlindTokens(), tokens, layer="keep", units=Tokens("embedding"), method=method, **FAST
    )
    assert maps.entropy.shape == (4, 8)
    foreground = torch.zeros(4, 8, dtype=torch.bool)
    foreground[:, :4] = True
    points = count_knowledge_points(maps.entropy, foreground, baseline=-3.0)
    assert points.n_bg.tolist() == [0, 0, 0, 0]
    assert (maps.entropy[:, 4:] > maps.entropy[:, :4].max()).all()  # the hidden half tolerates the most noise


@pytest.mark.parametrize("method", ["faithful", "secant"])
def test_a_point_model_blind_beyond_a_radius_has_no_knowledge_point_there(method: str) -> None:
    clouds = _clouds()
    maps = estimate_sigma_maps(RadiusBlindPoints(), clouds, layer="keep", units=Points(), method=method, **FAST)
    assert maps.entropy.shape == (3, 10)
    foreground = torch.zeros(3, 10, dtype=torch.bool)
    foreground[:, :6] = True
    points = count_knowledge_points(maps.entropy, foreground, baseline="image")
    assert points.n_bg.tolist() == [0, 0, 0]
    assert (maps.entropy[:, 6:] > maps.entropy[:, :6].max()).all()


def test_channels_first_points_give_the_same_maps() -> None:
    clouds = _clouds()

    class ChannelsFirst(RadiusBlindPoints):
        def forward(self, points: torch.Tensor) -> torch.Tensor:
            return super().forward(points.transpose(1, 2))

    last = estimate_sigma_maps(RadiusBlindPoints(), clouds, layer="keep", units=Points(), **FAST)
    first = estimate_sigma_maps(
        ChannelsFirst(), clouds.transpose(1, 2).contiguous(), layer="keep", units=Points(channels_first=True), **FAST
    )
    torch.testing.assert_close(first.entropy, last.entropy, rtol=0, atol=1e-5)


def test_padding_tokens_are_not_units() -> None:
    tokens = _tokens(pad_from=[8, 5, 3, 6])  # the first sequence has no padding
    maps = estimate_sigma_maps(HalfBlindTokens(), tokens, layer="keep", units=Tokens("embedding"), **FAST)
    padding = tokens == 0
    assert maps.entropy[padding].isnan().all() and maps.sigma[padding].isnan().all()
    assert not maps.entropy[~padding].isnan().any()
    points = count_knowledge_points(maps.entropy, ~padding, threshold=0.0)
    assert not (points.points & padding).any()
    # Ĥ is the mean over real tokens only, and padding content never changes a real token's σ
    visible = maps.entropy.nan_to_num(0.0).sum(dim=1) / (~padding).sum(dim=1)
    torch.testing.assert_close(maps.mean_entropy, visible)
    other = tokens.clone()
    other[padding] = 0
    again = estimate_sigma_maps(HalfBlindTokens(), other, layer="keep", units=Tokens("embedding"), **FAST)
    torch.testing.assert_close(again.entropy, maps.entropy, equal_nan=True)


@pytest.mark.parametrize("kind", ["tokens", "points"])
@pytest.mark.parametrize("method", ["faithful", "secant"])
def test_batching_order_and_sharding_never_change_a_map(kind: str, method: str) -> None:
    if kind == "tokens":
        model, inputs, units = HalfBlindTokens(), _tokens(pad_from=[8, 5, 3, 6]), Tokens("embedding")
    else:
        model, inputs, units = RadiusBlindPoints(), _clouds(count=4), Points()
    options = dict(layer="keep", units=units, method=method, **FAST)
    whole = estimate_sigma_maps(model, inputs, **options)
    order = [2, 0, 3, 1]
    shuffled = estimate_sigma_maps(model, inputs[order], indices=order, max_batch=8, **options)
    torch.testing.assert_close(shuffled.entropy, whole.entropy[order], rtol=0, atol=0, equal_nan=True)
    shard = estimate_sigma_maps(model, inputs[2:], indices=[2, 3], **options)
    torch.testing.assert_close(shard.entropy, whole.entropy[2:], rtol=0, atol=0, equal_nan=True)


def test_image_grid_units_are_the_default() -> None:
    from kd_probe.models import VGG

    net = VGG(num_classes=3, widths=(8,), convs_per_stage=1)
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    default = estimate_sigma_maps(net, images, layer="features.relu1", grid=4, samples=4, steps=3)
    explicit = estimate_sigma_maps(net, images, layer="features.relu1", units=ImageGrid(4), samples=4, steps=3)
    torch.testing.assert_close(explicit.entropy, default.entropy, rtol=0, atol=0)


class SequenceFirst(nn.Module):
    """Its embedding module outputs [T, N, D] (sequence first)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(20, 6)
        self.embedding = nn.Identity()
        self.head = nn.Linear(6, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(self.table(tokens).transpose(0, 1)).mean(dim=0))


def _broken_clouds() -> torch.Tensor:
    clouds = _clouds()
    clouds[:, 0, 0] = float("nan")
    return clouds


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: estimate_sigma_maps(HalfBlindTokens(), _tokens().float(), layer="keep", units=Tokens()),
            r"`tokens` must be a 2-D integer tensor of token ids \[N, T\], got a 2-D torch.float32 tensor",
        ),
        (
            lambda: estimate_sigma_maps(HalfBlindTokens(), _tokens()[0], layer="keep", units=Tokens()),
            r"`tokens` must be a 2-D integer tensor of token ids \[N, T\], got a 1-D torch.int64 tensor",
        ),
        (
            lambda: estimate_sigma_maps(HalfBlindTokens(), _tokens(), layer="keep", units=Tokens("embeding")),
            r"`embedding`='embeding'.*embedding",
        ),
        (
            lambda: estimate_sigma_maps(HalfBlindTokens(), _tokens(pad_from=[0]), layer="keep", units=Tokens()),
            r"`tokens`: 1 of 4 sequences are all padding \(`pad_id`=0\)",
        ),
        (
            lambda: estimate_sigma_maps(SequenceFirst(), _tokens(), layer="head", units=Tokens()),
            r"`embedding`='embedding' must output token vectors \[N, T, D\] \(batch first\) for tokens \[1, 8\], "
            r"got \(8, 1, 6\)",
        ),
        (
            lambda: estimate_sigma_maps(RadiusBlindPoints(), _clouds()[0], layer="keep", units=Points()),
            r"`points` must be a 3-D float tensor \[N, P, D\], got a 2-D torch.float32 tensor of shape \(10, 3\)",
        ),
        (
            lambda: estimate_sigma_maps(RadiusBlindPoints(), _broken_clouds(), layer="keep", units=Points()),
            r"`points` contains NaN or infinite values \(in 3 of 3 point clouds\)",
        ),
        (
            lambda: estimate_sigma_maps(RadiusBlindPoints(), _clouds(), layer="keep", units=Points(), grid=4),
            r"`grid`=4 applies to images without `units`; give it as `units=ImageGrid\(4\)`",
        ),
        (
            lambda: estimate_sigma_maps(RadiusBlindPoints(), _clouds(), layer="keep", units="points"),
            r"`units` must be ImageGrid\(...\), Tokens\(...\) or Points\(...\), got 'points'",
        ),
        (lambda: Tokens(pad_id="0"), r"`pad_id` must be an integer token id or None, got '0'"),
        (lambda: Tokens(embedding=""), r"`embedding` must be the dotted name of the embedding module, got ''"),
        (lambda: Points(channels_first=1), r"`channels_first` must be True or False, got 1"),
        (lambda: ImageGrid(grid=0), r"`grid` must be an integer ≥ 1 \(units per side\), got 0"),
        (
            lambda: count_knowledge_points(torch.zeros(2, 5), torch.zeros(2, 4, dtype=torch.bool)),
            r"`fg_mask` must hold per-unit foreground flags \[N, 5\], got \(2, 4\)",
        ),
    ],
)
def test_bad_inputs_are_refused_in_one_sentence(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


def test_empty_inputs_give_empty_maps_of_the_unit_shape() -> None:
    maps = estimate_sigma_maps(RadiusBlindPoints(), torch.zeros(0, 7, 3), layer="keep", units=Points())
    assert maps.entropy.shape == (0, 7)
    tokens = estimate_sigma_maps(HalfBlindTokens(), torch.zeros(0, 8, dtype=torch.long), layer="keep", units=Tokens())
    assert tokens.entropy.shape == (0, 8) and tokens.entropy.dtype == torch.float32
