"""Batches of a dataset held as whole tensors on the device: no per-sample Python, no workers.

Each epoch's order is a permutation drawn from (seed, epoch) alone and each epoch's
augmentation generator is seeded the same way, so an epoch can be replayed, or resumed from
any batch, exactly.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from utils.data.task_transforms import TaskTransform
from utils.data.transforms import Transform
from utils.seed import Stream, stream_seed

# (uint8 images, labels, generator) -> (inputs, targets) of one batch
BatchMaker = Callable[[torch.Tensor, torch.Tensor, "torch.Generator | None"],
                      tuple[torch.Tensor, torch.Tensor]]


def classification_batch(transform: Transform) -> BatchMaker:
    def make(images, labels, generator):
        return transform(images, generator), labels
    return make


def reconstruction_batch(transform: Transform, task: TaskTransform) -> BatchMaker:
    """Autoencoder batches: the labels are dropped, the task makes (input, target) from the
    transformed images."""
    def make(images, labels, generator):
        return task(transform(images, generator), generator)
    return make


class BatchLoader:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 make_batch: BatchMaker, *, shuffle: bool, seed: int = 0, max_batches: int = 0):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.make_batch = make_batch
        self.shuffle = shuffle
        self.seed = seed
        self.max_batches = max_batches
        self.generator = torch.Generator(device=images.device)

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        batches = math.ceil(self.num_samples / self.batch_size)
        return min(batches, self.max_batches) if self.max_batches else batches

    def order(self, epoch: int) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        cpu = torch.Generator().manual_seed(stream_seed(self.seed, Stream.ORDER, epoch))
        return torch.randperm(self.num_samples, generator=cpu).to(self.images.device)

    def epoch(self, epoch: int = 0, start: int = 0,
              generator_state: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch index `start`. Resuming mid-epoch passes the
        augmentation generator's state saved at that batch."""
        if generator_state is None:
            self.generator.manual_seed(stream_seed(self.seed, Stream.AUGMENT, epoch))
        else:
            self.generator.set_state(generator_state)
        order = self.order(epoch)
        for index in range(start, len(self)):
            window = slice(index * self.batch_size, (index + 1) * self.batch_size)
            if order is None:
                images, labels = self.images[window], self.labels[window]
            else:
                picked = order[window]
                images, labels = self.images[picked], self.labels[picked]
            yield self.make_batch(images, labels, self.generator)
