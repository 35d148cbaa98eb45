import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kd_probe import KnowledgePointCount, count_knowledge_points


def _data(count: int = 6, grid: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    entropy = -3.0 + 0.3 * torch.randn(count, grid, grid, generator=generator)
    masks = torch.rand(count, 16, 16, generator=generator) > 0.5
    return entropy, masks


def _expected(entropy: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    points = count_knowledge_points(entropy, masks)
    return {
        "n_fg": points.n_fg.float().mean().item(),
        "n_bg": points.n_bg.float().mean().item(),
        "fg_ratio": points.fg_ratio,
        "fg_ratio_with_points": points.fg_ratio_with_points,
        "baseline_entropy": points.baseline[0].item(),
    }


def _values(result: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value) for key, value in result.items()}


def test_batches_accumulate_to_the_functional_result() -> None:
    entropy, masks = _data()
    metric = KnowledgePointCount()
    for part in (slice(0, 2), slice(2, 3), slice(3, 6)):
        metric.update(entropy[part], masks[part])
    assert _values(metric.compute()) == pytest.approx(_expected(entropy, masks))


def test_indices_restore_order_and_drop_sampler_padding() -> None:
    entropy, masks = _data()
    metric = KnowledgePointCount()
    metric.update(entropy[[4, 5, 0]], masks[[4, 5, 0]], indices=torch.tensor([4, 5, 0]))
    metric.update(entropy[[1, 2, 3, 4]], masks[[1, 2, 3, 4]], indices=torch.tensor([1, 2, 3, 4]))  # 4 twice
    assert _values(metric.compute()) == pytest.approx(_expected(entropy, masks))


def test_indices_in_some_updates_only_is_an_error() -> None:
    entropy, masks = _data()
    metric = KnowledgePointCount()
    metric.update(entropy[:2], masks[:2])
    with pytest.raises(ValueError, match="`indices` must be given in every update or in none"):
        metric.update(entropy[2:], masks[2:], indices=torch.tensor([2, 3, 4, 5]))


def test_compute_before_update_gives_nan() -> None:
    with pytest.warns(UserWarning, match="compute"):
        values = KnowledgePointCount().compute()
    assert all(math.isnan(float(v)) for v in values.values())


def test_mismatched_masks_are_refused() -> None:
    with pytest.raises(
        ValueError, match=r"`fg_mask` of shape \(2, 16, 16\) does not match `entropy` of shape \(3, 4, 4\)"
    ):
        KnowledgePointCount().update(torch.zeros(3, 4, 4), torch.zeros(2, 16, 16))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"`threshold` must be a finite number of nats ≥ 0, got nan"):
        KnowledgePointCount(threshold=math.nan)
    with pytest.raises(
        ValueError, match=r"`baseline` must be 'dataset', 'image' or a finite number of nats, got 'all'"
    ):
        KnowledgePointCount(baseline="all")


def _rank_worker(rank: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        entropy, masks = _data(7)
        metric = KnowledgePointCount()
        shard = list(range(rank, 8, 2))  # a distributed sampler's shard of 7 images padded to 8
        shard = [i % 7 for i in shard]
        metric.update(entropy[shard], masks[shard], indices=torch.tensor(shard))
        queue.put((rank, _values(metric.compute())))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_the_single_process_result() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    processes = [context.Process(target=_rank_worker, args=(rank, port, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0]
    results = dict(queue.get(timeout=10) for _ in processes)
    expected = _expected(*_data(7))
    assert results[0] == pytest.approx(expected) and results[1] == pytest.approx(expected)


def test_token_and_point_units_accumulate_like_one_count() -> None:
    entropy = torch.tensor([[-3.5, -3.0, float("nan")], [-3.0, -3.6, -2.9], [-3.4, -3.0, -3.0]])
    flags = torch.tensor([[True, False, False], [False, True, False], [True, True, False]])
    metric = KnowledgePointCount()
    metric.update(entropy[:2], flags[:2])
    metric.update(entropy[2:], flags[2:])
    expected = count_knowledge_points(entropy, flags)
    assert float(metric.compute()["fg_ratio"]) == pytest.approx(expected.fg_ratio)
    assert float(metric.compute()["n_fg"]) == pytest.approx(float(expected.n_fg.float().mean()))
