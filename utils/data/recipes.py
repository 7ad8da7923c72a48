"""How each entry script turns a dataset's uint8 images into the batches it trains on."""
from __future__ import annotations

import math
from dataclasses import dataclass

from utils.data.datasets import Splits
from utils.data.loader import BatchLoader, classification_batch, reconstruction_batch
from utils.data.task_transforms import TASK_TRANSFORMS
from utils.data.transforms import Compose, Normalize, RandomCrop, Resize, flatten, random_hflip, to_unit_range
from utils.seed import Stream, stream_seed

EVAL_BATCH_FACTOR = 4  # evaluation batches are larger: no gradients are kept

# main_class_mlp.py: to [0, 1], normalise with the dataset's statistics, flatten.
MLP_NORMALISATION = {
    "MNIST": ((0.1307,), (0.3081,)),
    "FashionMNIST": ((0.2860,), (0.3530,)),
    "CIFAR10": ((0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
    "CIFAR100": ((0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
}


# main_class_cnn.py, per dataset key: (training transform, evaluation transform), as released
# (docs/ALGORITHM.md section 8). Every CNN takes 32x32 images.
IMAGENET = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR = (Compose(to_unit_range, random_hflip, RandomCrop(4, mode="edge"), IMAGENET),
         Compose(to_unit_range, IMAGENET))
# Digits: 28x28 zero-padded by 4 and cropped to 32x32 in training, but resized to 32x32 for
# evaluation, without normalisation (docs/FIDELITY.md).
DIGITS = (Compose(to_unit_range, RandomCrop(4, mode="zeros", size=32), random_hflip),
          Compose(to_unit_range, Resize(32)))
STL10_SMALL = (Compose(Resize(32), random_hflip, to_unit_range),
               Compose(Resize(32), to_unit_range))
CNN_TRANSFORMS = {
    "CIFAR10": CIFAR,
    "CIFAR100": CIFAR,
    "MNIST_CNN": DIGITS,
    "FashionMNIST_CNN": DIGITS,
    "STL10_cls": STL10_SMALL,
}


@dataclass
class Data:
    train: BatchLoader
    val: BatchLoader
    test: BatchLoader
    input_shape: tuple[int, ...]
    num_classes: int


def make_loaders(config, splits: Splits, train_batch, eval_batch) -> tuple[BatchLoader, ...]:
    """Training, validation and test loaders. Training batches are made like test batches under
    `augment: 0`; validation batches are, unless `augment_validation` asks for the training
    augmentation (as the released CIFAR pipelines did)."""
    eval_size = config.batchsize * EVAL_BATCH_FACTOR
    if not config.augment:
        train_batch = eval_batch
    val_batch = train_batch if config.augment_validation else eval_batch
    return (BatchLoader(*splits.train, config.batchsize, train_batch, shuffle=True,
                        seed=config.seed, max_batches=config.train_batches_per_epoch),
            BatchLoader(*splits.val, eval_size, val_batch, shuffle=False,
                        seed=stream_seed(config.seed, Stream.VALIDATION_AUGMENT)),
            BatchLoader(*splits.test, eval_size, eval_batch, shuffle=False))


def mlp_data(config, splits: Splits) -> Data:
    transform = Compose(to_unit_range, Normalize(*MLP_NORMALISATION[config.dataset]), flatten)
    batch = classification_batch(transform)
    input_shape = (math.prod(splits.train[0].shape[1:]),)
    return Data(*make_loaders(config, splits, batch, batch), input_shape, splits.num_classes)


def cnn_data(config, splits: Splits) -> Data:
    train_transform, eval_transform = CNN_TRANSFORMS[config.dataset]
    input_shape = tuple(eval_transform(splits.test[0][:1]).shape[1:])
    return Data(*make_loaders(config, splits, classification_batch(train_transform),
                              classification_batch(eval_transform)),
                input_shape, splits.num_classes)


def ae_data(config, splits: Splits) -> Data:
    """main_ae.py: values in [0, 1]; training images are also randomly cropped (96 with zero
    padding 4) and flipped. The task then makes (input, target) of every batch, validation and
    test included."""
    task = TASK_TRANSFORMS[config.task_transform]
    train = reconstruction_batch(Compose(RandomCrop(4, "zeros"), random_hflip, to_unit_range), task)
    evaluation = reconstruction_batch(to_unit_range, task)
    return Data(*make_loaders(config, splits, train, evaluation), tuple(splits.train[0].shape[1:]),
                splits.num_classes)
