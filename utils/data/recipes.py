"""How each entry script turns a dataset's uint8 images into the batches it trains on."""
from __future__ import annotations

import math
from dataclasses import dataclass

from utils.data.datasets import Splits
from utils.data.loader import BatchLoader, classification_batch, reconstruction_batch
from utils.data.task_transforms import TASK_TRANSFORMS
from utils.data.transforms import Compose, Normalize, RandomCrop, flatten, random_hflip, to_unit_range

EVAL_BATCH_FACTOR = 4  # evaluation batches are larger: no gradients are kept

# main_class_mlp.py: to [0, 1], normalise with the dataset's statistics, flatten.
MLP_NORMALISATION = {
    "MNIST": ((0.1307,), (0.3081,)),
    "FashionMNIST": ((0.2860,), (0.3530,)),
    "CIFAR10": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
    "CIFAR100": ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
}


@dataclass
class Data:
    train: BatchLoader
    val: BatchLoader
    test: BatchLoader
    input_shape: tuple[int, ...]
    num_classes: int


def make_loaders(config, splits: Splits, train_batch, eval_batch) -> tuple[BatchLoader, ...]:
    eval_size = config.batchsize * EVAL_BATCH_FACTOR
    return (BatchLoader(*splits.train, config.batchsize, train_batch, shuffle=True,
                        seed=config.seed, max_batches=config.train_batches_per_epoch),
            BatchLoader(*splits.val, eval_size, eval_batch, shuffle=False),
            BatchLoader(*splits.test, eval_size, eval_batch, shuffle=False))


def mlp_data(config, splits: Splits) -> Data:
    transform = Compose(to_unit_range, Normalize(*MLP_NORMALISATION[config.dataset]), flatten)
    batch = classification_batch(transform)
    input_shape = (math.prod(splits.train[0].shape[1:]),)
    return Data(*make_loaders(config, splits, batch, batch), input_shape, splits.num_classes)


def ae_data(config, splits: Splits) -> Data:
    """main_ae.py: values in [0, 1]; training images are also randomly cropped (96 with zero
    padding 4) and flipped. The task then makes (input, target) of every batch, validation and
    test included."""
    task = TASK_TRANSFORMS[config.task_transform]
    train = reconstruction_batch(Compose(RandomCrop(4, "zeros"), random_hflip, to_unit_range), task)
    evaluation = reconstruction_batch(to_unit_range, task)
    return Data(*make_loaders(config, splits, train, evaluation), tuple(splits.train[0].shape[1:]),
                splits.num_classes)
