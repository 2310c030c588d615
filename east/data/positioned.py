"""The position protocol every loader shares: the data stream is a function of
(seed, epoch, batch) only, so a restart mid-epoch yields exactly the remaining batches.

``InMemoryLoader`` (``east.data.loader``) and ``ImageFolderLoader`` (``east.data.imagenet``)
both build on ``PositionedLoader``; ``Loaders`` is what ``build_loaders`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from east.data.registry import DatasetInfo
from east.data.splits import splitmix64
from east.errors import EastError

# Stream tags mixed into the per-epoch seeds: order and augmentation are independent.
ORDER_STREAM = 0
AUGMENT_STREAM = 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that is a fixed function of the integers given (splitmix64 chain)."""
    state = np.uint64(0)
    with np.errstate(over="ignore"):
        for part in parts:
            state = splitmix64(np.array([state ^ np.uint64(part & 0xFFFF_FFFF_FFFF_FFFF)]))[0]
    return int(state) >> 1


def cpu_generator(*parts: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(mix_seed(*parts))


def shard_range(start: int, stop: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous part of positions [start, stop) split over ``world``
    ranks, cut as ``torch.tensor_split`` cuts: the first (n mod world) parts are one longer,
    trailing parts may be empty. The parts, in rank order, tile the range."""
    base, extra = divmod(stop - start, world)
    first = start + rank * base + min(rank, extra)
    return first, first + base + (1 if rank < extra else 0)


class PositionedLoader:
    """The resumable-position protocol shared by both loaders.

    ``(epoch, batch)`` names the next batch to yield. ``iter(loader)`` yields batches
    ``batch .. len - 1`` of ``epoch`` and advances the position *before* each yield, so a
    checkpoint taken in the loop body resumes after that batch; an exhausted epoch leaves
    the position at ``(epoch + 1, 0)``.
    """

    def __init__(
        self, num_samples: int, *, batch_size: int, shuffle: bool, seed: int, drop_last: bool
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.batch = 0
        # Data parallelism: this process yields only its rank's part of every batch.
        self.rank, self.world = 0, 1

    @property
    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_position(self, epoch: int, batch: int = 0) -> None:
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(f"bad loader position ({epoch}, {batch}) for {len(self)} batches")
        self.epoch, self.batch = epoch, batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """Sample order of ``epoch`` (CPU int64): randperm from (seed, epoch), or identity."""
        if not self.shuffle:
            return torch.arange(self.num_samples, dtype=torch.int64)
        generator = cpu_generator(self.seed, epoch, ORDER_STREAM)
        return torch.randperm(self.num_samples, generator=generator)

    def batch_bounds(self, batch: int) -> tuple[int, int]:
        """Positions [start, stop) of the whole (global) batch ``batch``."""
        start = batch * self.batch_size
        return start, min(start + self.batch_size, self.num_samples)

    def batch_size_at(self, batch: int) -> int:
        """Examples in the whole batch ``batch``, over all ranks."""
        start, stop = self.batch_bounds(batch)
        return stop - start

    def set_shard(self, rank: int, world: int) -> None:
        """Yield rank ``rank`` of ``world``'s part of each batch (``shard_range``): each
        rank reads, decodes and augments only its own examples. Positions, order and
        augmentation draws stay those of the whole batch, so the union over ranks is the
        single-process batch whatever the world size (and a checkpoint resumes at any)."""
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad shard {rank} of {world}")
        self.rank, self.world = rank, world

    def shard_bounds(self, batch: int) -> tuple[int, int]:
        """Positions [start, stop) of this rank's part of batch ``batch``."""
        return shard_range(*self.batch_bounds(batch), self.rank, self.world)

    def _identity(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "shuffle": self.shuffle,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, **self._identity()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = {key: state.get(key) for key in self._identity()}
        if saved != self._identity():
            raise EastError(
                f"checkpoint: data loader state was saved for {saved}, but this run's loader "
                f"is {self._identity()}: the checkpoint belongs to another configuration"
            )
        self.set_position(int(state["epoch"]), int(state["batch"]))


@dataclass
class Loaders:
    train: PositionedLoader
    val: PositionedLoader | None
    test: PositionedLoader
    info: DatasetInfo
