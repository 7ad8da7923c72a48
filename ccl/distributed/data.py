"""A run's loaders as one rank of several reads them: every batch is made whole, exactly as one
process makes it (order, augmentation: its random draws are the one process's), then sliced.
Making the whole batch costs each rank the indexing and augmentation of B samples instead of
B/N; they are batched operations on the device, small beside a training step."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from ccl.distributed import World
from utils.data.loader import BatchLoader
from utils.data.recipes import Data


class _Shard:
    """The loader's interface (`len`, `epoch`, `generator`, `num_samples`) over this rank's part
    of each batch."""

    def __init__(self, loader: BatchLoader, world: World):
        self.loader, self.world = loader, world

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def generator(self) -> torch.Generator:
        return self.loader.generator

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples  # of the whole set: the metrics divide the ranks' summed sums

    def epoch(self, epoch: int = 0, start: int = 0,
              generator_state: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for inputs, targets in self.loader.epoch(epoch, start, generator_state):
            yield self.part(inputs, targets)


class TrainShard(_Shard):
    def part(self, inputs, targets):
        return self.world.slice_batch(inputs, targets)


class EvaluationShard(_Shard):
    def part(self, inputs, targets):
        return self.world.evaluation_shard(inputs, targets)


def shard(data: Data, world: World) -> Data:
    """`data` with each loader read as this rank's part (one process: `data` itself)."""
    if world.size == 1:
        return data
    return dataclasses.replace(data, train=TrainShard(data.train, world),
                               val=EvaluationShard(data.val, world), test=EvaluationShard(data.test, world))
