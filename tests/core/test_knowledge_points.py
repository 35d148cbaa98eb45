import math

import pytest
import torch

from kd_probe import count_knowledge_points
from kd_probe.functional import background_baseline, downsample_mask, effective_images, foreground_ratio


def _maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 2×2 images; foreground = the left column."""
    entropy = torch.tensor(
        [
            [[-3.5, -3.0], [-3.0, -3.0]],  # background mean −3.0
            [[-3.2, -3.4], [-3.1, -2.6]],  # background mean −3.0
        ]
    )
    mask = torch.tensor([[[1, 0], [1, 0]]] * 2)
    return entropy, mask


def test_known_counts_with_the_dataset_baseline() -> None:
    entropy, mask = _maps()
    points = count_knowledge_points(entropy, mask, threshold=0.2)
    # H̄ = −3.0: image 0 has (0,0) on the foreground; image 1 has (0,0) (fg) and (0,1) (bg, −3.4)
    assert points.points.int().tolist() == [[[1, 0], [0, 0]], [[1, 1], [0, 0]]]
    assert points.n_fg.tolist() == [1, 1] and points.n_bg.tolist() == [0, 1]
    assert points.fg_ratio == pytest.approx((1.0 + 0.5) / 2)
    assert points.fg_ratio_with_points == pytest.approx(0.75)
    assert points.baseline.tolist() == pytest.approx([-3.0, -3.0])


def test_the_threshold_is_strict() -> None:
    entropy = torch.tensor([[[-3.25, -3.0], [-3.0, -3.0]]], dtype=torch.float64)
    mask = torch.tensor([[[1, 0], [0, 0]]])
    assert count_knowledge_points(entropy, mask, threshold=0.25).n_fg.tolist() == [0]
    assert count_knowledge_points(entropy, mask, threshold=0.2499).n_fg.tolist() == [1]


def test_image_and_fixed_baselines() -> None:
    entropy, mask = _maps()
    entropy[1, :, 1] -= 1.0  # image 1's background is now at −4.0
    per_image = count_knowledge_points(entropy, mask, baseline="image")
    assert per_image.baseline.tolist() == pytest.approx([-3.0, -4.0])
    assert per_image.n_fg.tolist() == [1, 0]
    fixed = count_knowledge_points(entropy, mask, baseline=-3.3)
    assert fixed.baseline.tolist() == pytest.approx([-3.3, -3.3])
    assert fixed.n_fg.tolist() == [1, 0] and fixed.n_bg.tolist() == [0, 2]


def test_image_resolution_masks_are_nearest_downsampled() -> None:
    entropy, unit_mask = _maps()
    image_mask = unit_mask.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)  # 8×8 pixels
    a = count_knowledge_points(entropy, unit_mask)
    b = count_knowledge_points(entropy, image_mask[:, None].float())
    assert torch.equal(a.points, b.points) and torch.equal(a.foreground, b.foreground)
    mask = torch.zeros(1, 5, 5)
    mask[0, 0, 0] = 1  # nearest picks pixels 0 and 2 (⌊u·5/2⌋) of each axis
    assert downsample_mask(mask, 2).int().tolist() == [[[1, 0], [0, 0]]]


def test_images_without_background_and_non_effective_images_are_left_out() -> None:
    entropy, mask = _maps()
    entropy = torch.cat([entropy, torch.full((1, 2, 2), -9.0)])
    mask = torch.cat([mask, torch.ones(1, 2, 2, dtype=mask.dtype)])  # all foreground: no baseline of its own
    points = count_knowledge_points(entropy, mask)
    assert points.baseline.tolist() == pytest.approx([-3.0] * 3)  # the dataset mean ignores image 2
    assert points.n_fg.tolist() == [1, 1, 4]
    assert math.isnan(count_knowledge_points(entropy, mask, baseline="image").baseline[2])
    dead = count_knowledge_points(entropy, mask, effective=torch.tensor([True, False, True]))
    assert dead.n_fg.tolist() == [1, 0, 4] and dead.n_bg.tolist() == [0, 0, 0]
    assert dead.fg_ratio == pytest.approx(1.0)


def test_foreground_ratio_counts_images_without_points_as_zero() -> None:
    assert foreground_ratio(torch.tensor([2, 0]), torch.tensor([2, 0])) == (0.25, 0.5)
    ratio, with_points = foreground_ratio(torch.tensor([0]), torch.tensor([0]))
    assert ratio == 0.0 and math.isnan(with_points)


def test_background_baseline_rejects_unknown_modes() -> None:
    entropy, mask = _maps()
    with pytest.raises(
        ValueError, match=r"`baseline` must be 'dataset', 'image' or a finite number of nats, got 'data'"
    ):
        background_baseline(entropy, downsample_mask(mask, 2), baseline="data")


@pytest.mark.parametrize(
    ("entropy", "mask", "message"),
    [
        (
            torch.zeros(2, 4, 4),
            torch.zeros(3, 16, 16),
            r"`fg_mask` of shape \(3, 16, 16\) does not match `entropy` of shape \(2, 4, 4\)",
        ),
        (
            torch.zeros(2, 4, 4),
            torch.zeros(2, 3, 16, 16),
            r"`fg_mask` must be masks \[N, H, W\] or \[N, 1, H, W\], got \(2, 3, 16, 16\)",
        ),
        (torch.zeros(2, 4, 4), torch.zeros(2, 3, 3), r"`fg_mask` of size 3×3 is smaller than the 4×4 unit grid"),
        (torch.zeros(4), torch.zeros(4), r"`entropy` must be float maps \[N, grid, grid\] or \[N, units\], got \(4,\)"),
    ],
)
def test_clear_errors(entropy: torch.Tensor, mask: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        count_knowledge_points(entropy, mask)


def test_effective_image_filter() -> None:
    entropy, mask = _maps()  # fg mean < bg mean in both images: consistent
    history = torch.stack([entropy, entropy, entropy])  # three checkpoints
    sigma_f = torch.ones(3, 2)
    late = [False, True, True]
    assert effective_images(sigma_f, history, mask, late=late).tolist() == [True, True]
    dead = sigma_f.clone()
    dead[0, 1] = 0.0  # σ_f = 0 at any checkpoint drops the image
    assert effective_images(dead, history, mask, late=late).tolist() == [True, False]
    flipped = history.clone()
    flipped[0, 0] = -flipped[0, 0]  # foreground above background, but only at an early checkpoint: kept
    assert effective_images(sigma_f, flipped, mask, late=late).tolist() == [True, True]
    flipped[2, 0] = -flipped[2, 0]  # ...and at a late one: dropped
    assert effective_images(sigma_f, flipped, mask, late=late).tolist() == [False, True]
