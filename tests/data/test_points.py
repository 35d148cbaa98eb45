import math
from typing import Any

import pytest
import torch

from kd_probe import KnowledgePointProbe, Points
from kd_probe.data import OBJECTS, PointCloudDataModule, generate_point_clouds
from kd_probe.data.points import _BOX, _CHUNK, CLUTTER


def test_same_seed_same_clouds_and_different_seed_or_stream_different_clouds() -> None:
    a, b = generate_point_clouds(40, points=64, seed=5), generate_point_clouds(40, points=64, seed=5)
    assert torch.equal(a.points, b.points) and torch.equal(a.foreground, b.foreground)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.points, generate_point_clouds(40, points=64, seed=6).points)
    assert not torch.equal(a.points, generate_point_clouds(40, points=64, seed=5, stream=1).points)


def test_a_cloud_does_not_depend_on_how_many_follow_it() -> None:
    many, few = generate_point_clouds(_CHUNK + 20, points=32, seed=2), generate_point_clouds(7, points=32, seed=2)
    assert torch.equal(many.points[:7], few.points) and torch.equal(many.foreground[:7], few.foreground)
    assert all(torch.equal(many.params[k][:7], few.params[k]) for k in few.params)


def test_shapes_dtypes_and_every_cloud_normalised_to_the_unit_ball() -> None:
    clouds = generate_point_clouds(300, points=64, num_classes=6, seed=0)
    assert clouds.points.shape == (300, 64, 3) and clouds.points.dtype == torch.float32
    assert clouds.foreground.shape == (300, 64) and clouds.foreground.dtype == torch.bool
    assert clouds.labels.dtype == torch.int64 and set(clouds.labels.tolist()) == set(range(6))
    torch.testing.assert_close(clouds.points.mean(dim=1), torch.zeros(300, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(clouds.points.norm(dim=-1).amax(dim=1), torch.ones(300))
    assert generate_point_clouds(0).points.shape == (0, 256, 3)


@pytest.mark.parametrize("fraction", [(0.5, 0.7), (0.2, 0.25), (1.0, 1.0)])
def test_the_foreground_count_is_within_object_fraction(fraction: tuple[float, float]) -> None:
    clouds = generate_point_clouds(200, points=100, object_fraction=fraction, seed=3)
    count = clouds.foreground.sum(dim=1)
    assert torch.equal(count, clouds.params["object_points"])
    assert int(count.min()) >= round(100 * fraction[0]) and int(count.max()) <= round(100 * fraction[1])
    assert fraction[0] == fraction[1] or int(count.max()) > int(count.min())


def _surface_residual(kind: str, local: torch.Tensor) -> torch.Tensor:
    """Distance-like residual of points in the canonical frame from the canonical surface (0 on it),
    re-derived here from the geometry: every canonical object has circumradius 1."""
    x, y, z = local.unbind(-1)
    rho = (x * x + y * y).sqrt()
    if kind == "sphere":
        return local.norm(dim=-1) - 1
    if kind == "cube":
        return local.abs().amax(dim=-1) - 1 / math.sqrt(3)
    if kind == "cylinder":  # radius 0.6, height 1.6: on the side or on a cap
        side = (rho - 0.6).abs() + (z.abs() - 0.8).clamp(min=0)
        cap = (z.abs() - 0.8).abs() + (rho - 0.6).clamp(min=0)
        return torch.minimum(side, cap)
    if kind == "cone":  # apex (0, 0, 0.8), base radius 0.6 at z = -0.8
        mantle = (rho - 0.6 * (0.8 - z) / 1.6).abs() + (z.abs() - 0.8).clamp(min=0)
        base = (z + 0.8).abs() + (rho - 0.6).clamp(min=0)
        return torch.minimum(mantle, base)
    if kind == "torus":  # tube radius 0.3 around a circle of radius 0.7
        return ((rho - 0.7) ** 2 + z * z).sqrt() - 0.3
    assert kind == "octahedron"
    return local.abs().sum(dim=-1) - 1


@pytest.mark.parametrize("kind", OBJECTS)
def test_object_points_lie_on_the_object_surface_given_by_params(kind: str) -> None:
    clouds = generate_point_clouds(120, points=64, num_classes=len(OBJECTS), seed=4)
    p = clouds.params
    chosen = (clouds.labels == OBJECTS.index(kind)).nonzero().flatten()[:8]
    assert len(chosen) == 8
    for i in chosen.tolist():
        rotation = p["rotation"][i]
        assert torch.allclose(rotation @ rotation.T, torch.eye(3), atol=1e-6) and rotation[2, 2] == 1  # about z
        local = (clouds.points[i] - p["offset"][i]) @ rotation / p["scale"][i]  # R⁻¹ (x − offset) / scale
        residual = _surface_residual(kind, local)
        assert float(residual[clouds.foreground[i]].abs().max()) < 1e-4, (kind, i)
        assert float(local[clouds.foreground[i]].norm(dim=-1).max()) < 1 + 1e-4  # circumradius 1


def test_clutter_has_the_geometry_of_its_type() -> None:
    clouds = generate_point_clouds(200, points=64, seed=6)
    p = clouds.params
    scene = clouds.points * p["radius"].view(-1, 1, 1) + p["centre"].unsqueeze(1)  # undo the normalisation
    for i in range(200):
        background = scene[i][~clouds.foreground[i]]
        kind = CLUTTER[int(p["clutter"][i])]
        if kind == "plane":  # every background point at the same height along the direction
            height = background @ p["direction"][i]
            assert float(height.max() - height.min()) < 1e-4
        elif kind == "noise":
            assert float(background.abs().max()) <= _BOX + 1e-5
    assert set(p["clutter"].tolist()) == {0, 1, 2}


def test_points_are_in_random_order() -> None:
    clouds = generate_point_clouds(512, points=64, seed=7)
    first, last = clouds.foreground.float().argmax(dim=1), 63 - clouds.foreground.flip(1).float().argmax(dim=1)
    contiguous = clouds.foreground.sum(dim=1) == last - first + 1
    assert int(contiguous.sum()) == 0  # the object is never one block of indices
    share = clouds.foreground.float().mean(dim=0)  # the foreground rate of each index: 0.6 everywhere
    assert float(share.min()) > 0.5 and float(share.max()) < 0.7


def _best_guess_accuracy(labels: torch.Tensor, clutter: torch.Tensor) -> float:
    """Accuracy of guessing the class from the clutter type alone (the commonest class of each type)."""
    table = torch.zeros(int(clutter.max()) + 1, int(labels.max()) + 1).index_put_(
        (clutter, labels), torch.ones(len(labels)), accumulate=True
    )
    return float(table.amax(dim=1).sum() / len(labels))


def test_background_bias_ties_the_clutter_to_the_class() -> None:
    tied = generate_point_clouds(1000, points=16, num_classes=5, background_bias=1.0, seed=1)
    p = tied.params
    assert bool(p["tied"].all()) and torch.equal(p["clutter"], tied.labels % len(CLUTTER))
    directions = [p["direction"][tied.labels == c].unique(dim=0) for c in range(5)]
    assert all(len(d) == 1 for d in directions) and len(torch.cat(directions).unique(dim=0)) == 5  # one per class
    assert _best_guess_accuracy(tied.labels, p["clutter"]) > 0.55

    free = generate_point_clouds(3000, points=16, num_classes=5, background_bias=0.0, seed=1)
    assert not bool(free.params["tied"].any())
    assert _best_guess_accuracy(free.labels, free.params["clutter"]) < 0.25  # chance is 0.2
    # independence: Pearson's χ² of class × clutter type below the 99.9 % quantile of χ²(8), 26.1
    table = torch.zeros(3, 5).index_put_(
        (free.params["clutter"], free.labels), torch.ones(len(free.labels)), accumulate=True
    )
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    assert float(((table - expected) ** 2 / expected).sum()) < 26.1
    half = generate_point_clouds(2000, points=16, background_bias=0.5, seed=1)
    assert 0.45 < float(half.params["tied"].float().mean()) < 0.55


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(count=-1), r"`count` must be a non-negative int, got -1\."),
        (dict(points=4), r"`points` must be an int of at least 8 points per cloud, got 4\."),
        (dict(num_classes=7), r"`num_classes` must be an int from 2 to 6 \(one per object in OBJECTS\), got 7\."),
        (
            dict(object_fraction=(0.7, 0.5)),
            r"`object_fraction` must be a pair \(low, high\) of shares with 0 < low ≤ high ≤ 1, got \(0.7, 0.5\)\.",
        ),
        (dict(object_fraction=0.5), r"`object_fraction` must be a pair .*, got 0.5\."),
        (dict(background_bias=1.5), r"`background_bias` must be a probability in \[0, 1\], got 1.5\."),
        (dict(seed=-1), r"`seed` must be a non-negative int, got -1\."),
    ],
)
def test_bad_options_are_refused(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_point_clouds(**{"count": 4, **kw})


_SMALL: dict[str, Any] = dict(num_classes=4, points=32, train_size=50, val_size=20, test_size=20, probe_size=8)


def _dm(**kw: Any) -> PointCloudDataModule:
    return PointCloudDataModule(**{**_SMALL, "batch_size": 16, **kw})


def test_splits_have_their_sizes_and_are_reproducible_by_seed() -> None:
    a, b = _dm(), _dm()
    a.setup("fit")
    assert (len(a.train_set), len(a.val_set), len(a.test_set), len(a.probe_set)) == (50, 20, 20, 8)
    for split in ("train_set", "val_set", "probe_set"):
        assert torch.equal(getattr(a, split).points, getattr(b, split).points)
        assert torch.equal(getattr(a, split).foreground, getattr(b, split).foreground)
    assert not torch.equal(_dm(seed=1).train_set.points, a.train_set.points)
    assert torch.equal(_dm(train_size=10).probe_set.points, _dm(train_size=90).probe_set.points)
    train, probe = a.train_set.points.flatten(1), a.probe_set.points.flatten(1)
    assert not any(bool((train == row).all(1).any()) for row in probe)  # splits are different clouds
    assert a.class_names == OBJECTS[:4] and (a.num_classes, a.points, a.seed, a.background_bias) == (4, 32, 0, 0.0)


def test_batches_are_triples_and_the_probe_loader_keeps_its_order() -> None:
    dm = _dm()
    dm.setup("fit")
    points, labels, foreground = next(iter(dm.train_dataloader()))
    assert points.shape == (16, 32, 3) and points.dtype == torch.float32
    assert labels.dtype == torch.int64 and foreground.shape == (16, 32) and foreground.dtype == torch.bool
    probe_points, probe_labels, probe_foreground = next(iter(dm.probe_dataloader()))
    assert torch.equal(probe_points, dm.probe_set.points) and torch.equal(probe_labels, dm.probe_set.labels)
    assert torch.equal(probe_foreground, dm.probe_set.foreground)


def test_random_rotation_turns_training_clouds_about_z_only() -> None:
    dm = _dm(random_rotation=True)
    stored = dm.train_set.points[3]
    turned, _, foreground = dm.train_set[3]
    assert not torch.allclose(turned, stored) and torch.equal(foreground, dm.train_set.foreground[3])
    torch.testing.assert_close(turned[:, 2], stored[:, 2])  # heights kept
    torch.testing.assert_close(turned[:, :2].norm(dim=1), stored[:, :2].norm(dim=1))  # distances from the z axis kept
    assert torch.equal(dm.val_set[3][0], dm.val_set.points[3])  # only the training split is turned
    assert torch.equal(dm.probe_set[0][0], dm.probe_set.points[0])


def test_the_knowledge_point_probe_reads_points_from_the_data_module() -> None:
    dm = _dm()
    assert dm.units == Points()
    probe = KnowledgePointProbe(dm, layer="mlp.relu1")
    assert probe.probe_set.units == Points() and torch.equal(probe.foreground, dm.probe_set.foreground)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(train_size=-1), r"`train_size` must be a non-negative int, got -1\."),
        (dict(batch_size=0), r"`batch_size` must be a positive int, got 0\."),
        (dict(num_workers=-2), r"`num_workers` must be a non-negative int, got -2\."),
        (dict(num_classes=1), r"`num_classes` must be an int from 2 to 6"),
        (dict(points=2), r"`points` must be an int of at least 8 points per cloud, got 2\."),
        (dict(object_fraction=(0.0, 0.5)), r"`object_fraction` must be a pair .*, got \(0.0, 0.5\)\."),
        (dict(background_bias=-0.1), r"`background_bias` must be a probability in \[0, 1\], got -0.1\."),
        (dict(random_rotation="yes"), r"`random_rotation` must be True or False, got 'yes'\."),
        (dict(seed=1.5), r"`seed` must be a non-negative int, got 1.5\."),
    ],
)
def test_bad_data_module_options_are_refused_at_construction(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _dm(**kw)
