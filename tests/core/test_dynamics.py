import math

import pytest
import torch

from kd_probe.core.dynamics import CountSketch
from kd_probe.functional import cosine, learning_speed, normalised_step, path_efficiency, stability


def test_learning_speed_known_values_with_ties_to_the_earliest_checkpoint() -> None:
    n_fg = torch.tensor([[1, 0, 2], [3, 0, 2], [3, 1, 0]])  # image 0: tie c=1,2 → 1; image 1: c=2; image 2: c=0
    distances = torch.tensor([0.0, 0.5, 2.0])
    d_mean, d_std, d_var = learning_speed(n_fg, distances)
    travelled = torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)
    assert d_mean == pytest.approx(float(travelled.mean()))
    assert d_var == pytest.approx(float(travelled.var(unbiased=False)))  # population statistics
    assert d_std == pytest.approx(math.sqrt(d_var))


def test_learning_speed_single_checkpoint_and_all_zero_counts() -> None:
    assert learning_speed(torch.tensor([[0, 5]]), torch.tensor([0.0])) == (0.0, 0.0, 0.0)
    assert learning_speed(torch.zeros(3, 2, dtype=torch.long), torch.tensor([1.0, 2.0, 3.0])) == (1.0, 0.0, 0.0)


def test_learning_speed_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"must agree, got \(2, 3\) and \(3,\)"):
        learning_speed(torch.zeros(2, 3), torch.zeros(3))


def _history(*checkpoints: list[list[int]]) -> torch.Tensor:
    """Checkpoints of one row of units per image: [C, N, 1, units]."""
    return torch.tensor(checkpoints, dtype=torch.bool)[:, :, None, :]


def test_stability_known_values_and_empty_unions() -> None:
    history = _history(
        [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
        [[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]],
    )
    # image 0: final {1, 2}, union {0, 1, 2} → 2/3; image 1: empty union → 0; image 2: 1/1
    assert stability(history) == pytest.approx((2 / 3 + 0 + 1) / 3)
    foreground = torch.tensor([[[1, 0, 1, 1]], [[1, 1, 1, 1]], [[0, 1, 1, 1]]], dtype=torch.bool)
    # foreground only: image 0 final {2}, union {0, 2} → 1/2; image 2: no foreground point → 0
    assert stability(history, foreground) == pytest.approx((1 / 2 + 0 + 0) / 3)


def test_stability_of_a_single_checkpoint_is_one_where_there_are_points() -> None:
    assert stability(_history([[1, 0], [0, 0]])) == pytest.approx(0.5)


def test_step_cosine_and_efficiency() -> None:
    start = torch.tensor([3.0, 4.0])
    assert normalised_step(start, start + torch.tensor([0.0, 1.0]), 5.0) == pytest.approx(0.2)
    assert cosine(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 0.0])) == pytest.approx(-1.0)
    assert math.isnan(cosine(torch.zeros(2), torch.ones(2)))
    assert path_efficiency(3.0, 4.0) == 0.75 and math.isnan(path_efficiency(0.0, 0.0))


def test_count_sketch_preserves_cosines_approximately() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20_000, generator=generator)
    b = 0.6 * a + 0.8 * torch.randn(20_000, generator=generator)
    sketch = CountSketch(20_000, 2048, seed=1)
    assert cosine(sketch(a), sketch(b)) == pytest.approx(cosine(a, b), abs=0.05)
    assert torch.equal(sketch(a), CountSketch(20_000, 2048, seed=1)(a))  # fixed seed: same projection
