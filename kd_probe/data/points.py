"""Generated 3-D point clouds of simple objects in clutter, with exact per-point foreground (pure torch).

Each cloud holds one object (its class, ``OBJECTS[c]``) and background clutter of one type (``CLUTTER``):
a plane patch (a floor or a wall), a few small Gaussian blobs, or uniform noise in the scene's box.

- The object's points lie exactly on its surface, spread uniformly over the surface area. Every canonical
  object is centred at the origin with circumradius 1 (a cylinder or cone stands on the z axis, a torus lies
  around it); it is turned about the vertical z axis by a uniformly random angle (objects stand upright, as
  in ModelNet or ScanObjectNN: full 3-D rotations make the task too hard for a small PointNet with clutter),
  scaled and moved: ``point = scale · rotation @ canonical + offset``, with the pose in ``params`` in the
  coordinates of the returned (normalised) cloud.
- The clutter lies close around the object, as the floor and walls around a scanned object: a plane patch or
  the blobs' middle at a distance just past the object along a random ``direction`` (a floor, a wall or a
  ceiling), or noise in a box a little larger than the object.
- With probability ``background_bias`` the clutter type (``labels % len(CLUTTER)``) and the side of the
  scene it lies on (one fixed direction per class) are tied to the class, so that a background shortcut
  exists, as ``background_bias`` does for the generated images.
- The points of a cloud are put in a random order, the foreground flags permuted alike, so a point's index
  carries no label information.
- Each cloud is normalised: the centroid of all its points (object and clutter) moves to the origin and
  the farthest point to distance 1, so the cloud fills the unit ball.

Everything is vectorised over clouds and drawn from generators seeded by ``(seed, stream, chunk)``, so a
split is the same on every machine and for every number of clouds asked for (cloud ``i`` does not depend on
how many follow it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kd_probe.data.shapes import _check_seed, _chunk_generator

__all__ = ["CLUTTER", "OBJECTS", "PointClouds", "generate_point_clouds"]

OBJECTS = ("sphere", "cube", "cylinder", "cone", "torus", "octahedron")
CLUTTER = ("plane", "blobs", "noise")
_CHUNK = 256  # clouds drawn from one generator; fixed so that results never depend on batching
_BLOBS = 3
# the scene (before normalisation): object circumradius and offset per axis, how far the plane patch and the
# blobs' middle lie from the scene's centre, the plane's half-side, and the half-side of the box of noise
_SCALE = (0.8, 1.0)
_OFFSET = 0.1
_DISTANCE = (1.0, 1.2)
_PLANE_HALF = (0.8, 1.1)
_BLOB_SPREAD = 0.4
_BOX = 1.1
# canonical sizes, all with circumradius 1: cube half-side, cylinder and cone radius and half-height, torus radii
_CUBE_HALF = 1 / math.sqrt(3.0)
_RADIUS, _HALF_HEIGHT = 0.6, 0.8
_TORUS_MAJOR, _TORUS_MINOR = 0.7, 0.3


@dataclass
class PointClouds:
    """A generated split: ``points`` float32 ``[N, P, 3]``, ``labels`` int64 ``[N]``, ``foreground`` bool
    ``[N, P]`` (true exactly on the object's points), and ``params``, per-cloud parameters for inspection and
    tests: ``labels``; ``object_points`` (the foreground count); the pose in normalised coordinates, ``angle``
    (about z, radians), ``rotation`` ``[N, 3, 3]``, ``scale`` (the object's circumradius) and ``offset``
    ``[N, 3]``; ``clutter`` (index into ``CLUTTER``), ``tied`` (clutter tied to the class) and ``direction``
    ``[N, 3]`` (the side the clutter lies on); the normalisation ``centre`` ``[N, 3]`` and ``radius`` (scene
    coordinates = ``points · radius + centre``)."""

    points: Tensor
    labels: Tensor
    foreground: Tensor
    params: dict[str, Tensor]


def _rotation_about_z(angle: Tensor) -> Tensor:
    """Angles ``[...]`` → rotation matrices ``[..., 3, 3]`` about the vertical z axis."""
    cos, sin, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    rows = [[cos, -sin, zero], [sin, cos, zero], [zero, zero, one]]
    return torch.stack([torch.stack(row, -1) for row in rows], -2)


def _class_directions(num_classes: int) -> Tensor:
    """One fixed clutter direction per class (the corners of a cube, seen from its centre) ``[C, 3]``."""
    bits = torch.arange(num_classes).unsqueeze(1) >> torch.arange(3)
    return (1.0 - 2.0 * (bits & 1).float()) / math.sqrt(3.0)


# Canonical surfaces: ``u`` ``[M, 3]`` uniform in [0, 1) ↦ points ``[M, 3]`` spread uniformly over the area.
def _sphere(u: Tensor) -> Tensor:
    z, phi = 2 * u[:, 0] - 1, 2 * math.pi * u[:, 1]
    ring = (1 - z * z).clamp(min=0).sqrt()
    return torch.stack([ring * phi.cos(), ring * phi.sin(), z], 1)


def _cube(u: Tensor) -> Tensor:
    face = (u[:, 0] * 6).long().clamp(max=5)  # axis face % 3, side + for faces 0–2
    side = torch.where(face < 3, 1.0, -1.0) * _CUBE_HALF
    face_coordinates = torch.stack([side, (2 * u[:, 1] - 1) * _CUBE_HALF, (2 * u[:, 2] - 1) * _CUBE_HALF], 1)
    order = (torch.arange(3) - (face % 3).unsqueeze(1)) % 3  # coordinate i of the point is face_coordinates[i - axis]
    return face_coordinates.gather(1, order)


def _cylinder(u: Tensor) -> Tensor:
    side_share = _HALF_HEIGHT / (_HALF_HEIGHT + _RADIUS / 2)  # side area 4πRH, caps 2πR²
    on_side = u[:, 0] < side_share
    phi = 2 * math.pi * u[:, 1]
    v = torch.where(on_side, u[:, 0] / side_share, (u[:, 0] - side_share) / (1 - side_share))
    r = torch.where(on_side, torch.full_like(v, _RADIUS), _RADIUS * u[:, 2].sqrt())
    z = torch.where(on_side, _HALF_HEIGHT * (2 * v - 1), torch.where(v < 0.5, _HALF_HEIGHT, -_HALF_HEIGHT))
    return torch.stack([r * phi.cos(), r * phi.sin(), z], 1)


def _cone(u: Tensor) -> Tensor:
    slant = math.hypot(_RADIUS, 2 * _HALF_HEIGHT)
    mantle_share = slant / (slant + _RADIUS)  # mantle area πRL, base πR²
    on_mantle = u[:, 0] < mantle_share
    phi, t = 2 * math.pi * u[:, 1], u[:, 2].sqrt()  # t: fraction of the way from the apex (or centre) to the rim
    z = torch.where(on_mantle, _HALF_HEIGHT - 2 * _HALF_HEIGHT * t, torch.full_like(t, -_HALF_HEIGHT))
    r = _RADIUS * t
    return torch.stack([r * phi.cos(), r * phi.sin(), z], 1)


def _torus(u: Tensor) -> Tensor:
    # the angle θ around the tube has density ∝ R + r·cos θ: invert its distribution function by Newton steps
    target = 2 * math.pi * _TORUS_MAJOR * u[:, 0]
    theta = 2 * math.pi * u[:, 0]
    for _ in range(8):
        theta = theta - (_TORUS_MAJOR * theta + _TORUS_MINOR * theta.sin() - target) / (
            _TORUS_MAJOR + _TORUS_MINOR * theta.cos()
        )
    phi = 2 * math.pi * u[:, 1]
    ring = _TORUS_MAJOR + _TORUS_MINOR * theta.cos()
    return torch.stack([ring * phi.cos(), ring * phi.sin(), _TORUS_MINOR * theta.sin()], 1)


def _octahedron(u: Tensor) -> Tensor:
    face = (u[:, 0] * 8).long().clamp(max=7)  # the octant, one bit per axis
    signs = 1.0 - 2.0 * ((face.unsqueeze(1) >> torch.arange(3)) & 1).float()
    a, b = u[:, 1], u[:, 2]
    folded = a + b > 1  # fold the unit square onto the triangle a + b ≤ 1
    a, b = torch.where(folded, 1 - a, a), torch.where(folded, 1 - b, b)
    return signs * torch.stack([a, b, 1 - a - b], 1)


_SURFACES: tuple[Callable[[Tensor], Tensor], ...] = (_sphere, _cube, _cylinder, _cone, _torus, _octahedron)


def _sample_chunk(
    count: int,
    points: int,
    num_classes: int,
    object_fraction: tuple[float, float],
    background_bias: float,
    g: torch.Generator,
) -> dict[str, Tensor]:
    """Draw every random number a chunk of clouds needs (scene coordinates); building is then a pure function."""

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=g)

    labels = torch.randint(num_classes, (count,), generator=g)
    low, high = object_fraction
    object_points = ((low + (high - low) * rand(count)) * points).round().long().clamp(1, points)
    tied = rand(count) < background_bias
    clutter = torch.where(tied, labels % len(CLUTTER), torch.randint(len(CLUTTER), (count,), generator=g))
    free_direction = torch.randn(count, 3, generator=g)
    free_direction = free_direction / free_direction.norm(dim=1, keepdim=True)
    direction = torch.where(tied.unsqueeze(1), _class_directions(num_classes)[labels], free_direction)
    distance = _DISTANCE[0] + (_DISTANCE[1] - _DISTANCE[0]) * rand(count)
    return {
        "labels": labels,
        "object_points": object_points,
        "angle": 2 * math.pi * rand(count),
        "scale": _SCALE[0] + (_SCALE[1] - _SCALE[0]) * rand(count),
        "offset": _OFFSET * (2 * rand(count, 3) - 1),
        "tied": tied,
        "clutter": clutter,
        "direction": direction,
        "distance": distance,
        "plane_size": _PLANE_HALF[0] + (_PLANE_HALF[1] - _PLANE_HALF[0]) * rand(count),
        "plane_angle": 2 * math.pi * rand(count),
        "blob_centres": distance[:, None, None] * direction.unsqueeze(1)
        + _BLOB_SPREAD * torch.randn(count, _BLOBS, 3, generator=g),
        "blob_widths": 0.05 + 0.1 * rand(count, _BLOBS),
        "surface_draws": rand(count, points, 3),
        "clutter_draws": rand(count, points, 3),
        "blob_noise": torch.randn(count, points, 3, generator=g),
        "order": rand(count, points),
    }


def _clutter(p: dict[str, Tensor]) -> Tensor:
    """Clutter points ``[B, P, 3]`` of every cloud's clutter type, in scene coordinates."""
    u, n = p["clutter_draws"], p["direction"]
    # plane: a square patch at ``distance`` along ``direction``, facing the centre, turned by ``plane_angle``
    helper = torch.where((n[:, 2].abs() > 0.9).unsqueeze(1), torch.tensor([1.0, 0, 0]), torch.tensor([0, 0, 1.0]))
    t1 = torch.linalg.cross(helper, n)
    t1 = t1 / t1.norm(dim=1, keepdim=True)
    t2 = torch.linalg.cross(n, t1)
    cos_a, sin_a = p["plane_angle"].cos().unsqueeze(1), p["plane_angle"].sin().unsqueeze(1)
    t1, t2 = cos_a * t1 + sin_a * t2, -sin_a * t1 + cos_a * t2
    half = p["plane_size"].view(-1, 1, 1)
    plane = (p["distance"].unsqueeze(1) * n).unsqueeze(1) + half * (
        (2 * u[..., :1] - 1) * t1.unsqueeze(1) + (2 * u[..., 1:2] - 1) * t2.unsqueeze(1)
    )
    # blobs: isotropic Gaussian clusters, points shared out among them by the third draw
    blob = (u[..., 2] * _BLOBS).long().clamp(max=_BLOBS - 1)
    centres = p["blob_centres"].gather(1, blob.unsqueeze(-1).expand(-1, -1, 3))
    blobs = centres + p["blob_widths"].gather(1, blob).unsqueeze(-1) * p["blob_noise"]
    # noise: uniform in the scene's box
    noise = _BOX * (2 * u - 1)
    kinds = torch.stack([plane, blobs, noise], 1)  # [B, len(CLUTTER), P, 3]
    return kinds.gather(1, p["clutter"].view(-1, 1, 1, 1).expand(-1, 1, *u.shape[1:])).squeeze(1)


def _build(p: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Build a chunk: normalised points ``[B, P, 3]``, foreground ``[B, P]``, and the normalisation
    ``centre`` ``[B, 3]`` and ``radius`` ``[B]``."""
    count, points = p["order"].shape
    canonical = torch.zeros(count, points, 3)
    for k, surface in enumerate(_SURFACES):
        chosen = p["labels"] == k
        if chosen.any():
            canonical[chosen] = surface(p["surface_draws"][chosen].reshape(-1, 3)).view(-1, points, 3)
    rotation = _rotation_about_z(p["angle"])
    objects = p["scale"].view(-1, 1, 1) * canonical @ rotation.transpose(1, 2) + p["offset"].unsqueeze(1)
    slot = torch.arange(points).unsqueeze(0)
    foreground = slot < p["object_points"].unsqueeze(1)  # object first, then clutter; shuffled below
    cloud = torch.where(foreground.unsqueeze(-1), objects, _clutter(p))
    order = p["order"].argsort(dim=1)
    cloud = cloud.gather(1, order.unsqueeze(-1).expand(-1, -1, 3))
    foreground = foreground.gather(1, order)
    centre = cloud.mean(dim=1)
    cloud = cloud - centre.unsqueeze(1)
    radius = cloud.norm(dim=-1).amax(dim=1).clamp(min=1e-6)
    return cloud / radius.view(-1, 1, 1), foreground, centre, radius


def generate_point_clouds(
    count: int,
    *,
    points: int = 256,
    num_classes: int = 5,
    object_fraction: Sequence[float] = (0.5, 0.7),
    background_bias: float = 0.0,
    seed: int = 0,
    stream: int = 0,
) -> PointClouds:
    """Generate ``count`` point clouds. The same ``(seed, stream)`` always gives the same clouds.

    Args:
        count: number of clouds.
        points: points per cloud (≥ 8).
        num_classes: number of object classes, at most ``len(OBJECTS)`` (6); class ``c`` is ``OBJECTS[c]``.
        object_fraction: ``(low, high)``, the share of a cloud's points on the object, drawn uniformly per
            cloud (``0 < low ≤ high ≤ 1``); the rest is clutter.
        background_bias: probability in [0, 1] that a cloud's clutter type and side are tied to its class.
        seed: random seed.
        stream: independent stream of clouds for the same seed (the data module uses one per split).

    Example::

        >>> clouds = generate_point_clouds(4, points=64, num_classes=3, seed=1)
        >>> clouds.points.shape, clouds.points.dtype, clouds.foreground.shape
        (torch.Size([4, 64, 3]), torch.float32, torch.Size([4, 64]))
        >>> bool((clouds.points.norm(dim=-1).amax(dim=1) - 1).abs().max() < 1e-5)
        True
    """
    _check_options(
        count=count,
        points=points,
        num_classes=num_classes,
        object_fraction=object_fraction,
        background_bias=background_bias,
    )
    _check_seed("seed", seed)
    _check_seed("stream", stream)
    low, high = (float(value) for value in object_fraction)
    clouds, foregrounds, params = [], [], []
    for chunk in range(max(1, math.ceil(count / _CHUNK))):
        n = min(_CHUNK, count - chunk * _CHUNK)
        g = _chunk_generator(seed, stream, chunk)
        p = _sample_chunk(_CHUNK, points, num_classes, (low, high), float(background_bias), g)
        p = {k: v[:n] for k, v in p.items()}
        cloud, foreground, centre, radius = _build(p)
        clouds.append(cloud)
        foregrounds.append(foreground)
        params.append(
            {
                "labels": p["labels"],
                "object_points": p["object_points"],
                "angle": p["angle"],
                "rotation": _rotation_about_z(p["angle"]),
                "scale": p["scale"] / radius,
                "offset": (p["offset"] - centre) / radius.unsqueeze(1),
                "clutter": p["clutter"],
                "tied": p["tied"],
                "direction": p["direction"],
                "centre": centre,
                "radius": radius,
            }
        )
    merged = {k: torch.cat([p[k] for p in params]) for k in params[0]}
    return PointClouds(torch.cat(clouds), merged["labels"].clone(), torch.cat(foregrounds), merged)


def _check_options(
    *, count: int, points: int, num_classes: int, object_fraction: Sequence[float], background_bias: float
) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"`count` must be a non-negative int, got {count!r}.")
    if isinstance(points, bool) or not isinstance(points, int) or points < 8:
        raise ValueError(f"`points` must be an int of at least 8 points per cloud, got {points!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 2 <= num_classes <= len(OBJECTS):
        raise ValueError(
            f"`num_classes` must be an int from 2 to {len(OBJECTS)} (one per object in OBJECTS), got {num_classes!r}."
        )
    pair = isinstance(object_fraction, (tuple, list)) and len(object_fraction) == 2
    numbers = pair and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in object_fraction)
    if not numbers or not 0.0 < float(object_fraction[0]) <= float(object_fraction[1]) <= 1.0:
        raise ValueError(
            f"`object_fraction` must be a pair (low, high) of shares with 0 < low ≤ high ≤ 1, got {object_fraction!r}."
        )
    probability = isinstance(background_bias, (int, float)) and not isinstance(background_bias, bool)
    if not probability or not 0.0 <= float(background_bias) <= 1.0:
        raise ValueError(f"`background_bias` must be a probability in [0, 1], got {background_bias!r}.")
