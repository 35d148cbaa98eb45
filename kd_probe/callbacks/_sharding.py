"""A probe's images shared out over the DDP ranks, and the collectives that put the results back together.

Rank ``r`` of ``w`` works on the images ``r, r + w, …`` (:func:`~kd_probe.callbacks._common.shard_indices`).
A probe computes in steps: each rank computes its share (:meth:`Shards.compute`), then every rank learns
whether any rank failed — and if one did, every rank raises :class:`ShardFailure` with the same reason, so that
none waits in a collective for a rank that gave up — and then gathers what must be whole (:meth:`Shards.gather`).
Every rank makes the same calls in the same order; on one process there is no collective at all. What a probe
computes between two steps (outside :meth:`Shards.compute`) must be the same on every rank — arithmetic on
gathered tensors — so that no rank raises where the others go on to the next collective.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import Tensor

from kd_probe.callbacks._common import gather_shards, shard_indices
from kd_probe.callbacks._guard import failure_reason

__all__ = ["ShardFailure", "Shards"]

_REASON_BYTES = 480  # of a failure's reason sent to the other ranks (UTF-8, cut at the end)


class ShardFailure(Exception):
    """A step of a sharded probe failed on some rank: raised on every rank with the first failing rank's reason
    (``"FloatingPointError: … (rank 1)"``), which the history entry records as it is."""


def failure_of(error: BaseException) -> str:
    """What a history entry records of a failed probe: a :class:`ShardFailure`'s reason as it is, else
    ``"<type>: <message>"``."""
    return str(error) if isinstance(error, ShardFailure) else failure_reason(error)


class Shards:
    """The share of ``count`` probe images that this rank works on, and the steps that make the whole again.

    Args:
        trainer: gives the rank, the number of ranks and the collectives (its strategy's ``all_gather``).
        count: the probe images.
        device: where the collectives' tensors live (the probed network's device).

    Example::

        shards = Shards(trainer, images.shape[0], device)
        local = shards.compute(lambda: {"cams": grad_cam(net, images[shards.work], labels[shards.work], layer=...)})
        cams = shards.gather(local["cams"])  # [count, H, W] on every rank, in the images' order
    """

    def __init__(self, trainer: pl.Trainer, count: int, device: torch.device) -> None:
        self.trainer, self.count, self.device = trainer, count, device
        self.rank, self.world = trainer.global_rank, trainer.world_size
        self.indices = shard_indices(count, self.rank, self.world)  # this rank's images
        # the images this rank computes: its share, or a stand-in image when it has none (more ranks than images),
        # whose results give the gathers their shapes and types and are then dropped
        self.work = self.indices or [0]

    @property
    def key(self) -> tuple[int, int]:
        """``(rank, world size)``: a cache of per-rank work is valid for this share only."""
        return self.rank, self.world

    def compute(self, work: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """``work()`` — tensors with one row per image of :attr:`work` — then, with several ranks, one collective
        that tells every rank whether any failed. A failure raises on every rank: on one process the error
        itself, with several a :class:`ShardFailure` naming the first failing rank and its reason."""
        results: dict[str, Tensor] = {}
        error: Exception | None = None
        try:
            results = work()
        except Exception as raised:  # agreed on below: no rank may leave the others waiting in a collective
            error = raised
        if self.world == 1:
            if error is not None:
                raise error
            return results
        reason = self._first_failure(None if error is None else failure_of(error))
        if reason is not None:
            raise ShardFailure(reason) from error
        return {key: value[: len(self.indices)] for key, value in results.items()}

    def gather(self, local: Tensor, kept: int | None = None) -> Tensor:
        """This rank's rows of the images ``0 … kept − 1`` (default all) gathered into ``[kept, ...]``, in the
        images' order, on every rank (a collective with several ranks; ``local`` itself on one process)."""
        kept = self.count if kept is None else min(kept, self.count)
        if self.world == 1:
            return local[:kept]
        share = len(shard_indices(kept, self.rank, self.world))  # the first images of a share come first in it
        return gather_shards(self.trainer, local[:share].to(self.device), kept)

    def _first_failure(self, reason: str | None) -> str | None:
        """Every rank's failure (``None``: none) through one collective: the first failing rank's reason with
        its rank, the same on every rank, or ``None`` when no rank failed."""
        message = torch.zeros(_REASON_BYTES + 1, dtype=torch.uint8)
        if reason is not None:
            encoded = reason.encode()[:_REASON_BYTES]
            message[0] = 1
            message[1 : 1 + len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8)
        everyone = self.trainer.strategy.all_gather(message.to(self.device)).cpu()  # [world, 1 + bytes]
        failed = everyone[:, 0].nonzero().flatten().tolist()
        if not failed:
            return None
        rank = int(failed[0])
        text = bytes(everyone[rank, 1:].tolist()).rstrip(b"\0").decode(errors="ignore")
        return f"{text} (rank {rank})"
