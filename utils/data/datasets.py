"""Where each config `dataset` key reads its images, and the 90/10 train/validation split."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.data.cifar import load_cifar_split
from utils.data.files import check_data_root
from utils.data.mnist import load_idx_split
from utils.data.stl10 import load_stl10_split


@dataclass(frozen=True)
class Source:
    """A dataset as it lies on disk: `load(name, root, split) -> (uint8 images, labels)`."""

    name: str
    load: Callable[[str, Path, str], tuple[torch.Tensor, torch.Tensor]]
    channels: int
    num_classes: int


SOURCES = {
    "MNIST": Source("MNIST", load_idx_split, 1, 10),
    "FashionMNIST": Source("FashionMNIST", load_idx_split, 1, 10),
    "CIFAR10": Source("CIFAR10", load_cifar_split, 3, 10),
    "CIFAR100": Source("CIFAR100", load_cifar_split, 3, 100),
    "STL10": Source("STL10", load_stl10_split, 3, 10),
}

# config `dataset` key -> the files it reads (the CNN and AE keys reuse the same files)
SOURCE_OF = {
    "MNIST": "MNIST", "FashionMNIST": "FashionMNIST", "CIFAR10": "CIFAR10", "CIFAR100": "CIFAR100",
    "MNIST_CNN": "MNIST", "FashionMNIST_CNN": "FashionMNIST", "STL10_cls": "STL10", "STL10": "STL10",
}

VAL_FRACTION = 0.1


@dataclass
class Splits:
    """uint8 images (N, C, H, W) and int64 labels of the train, validation and test sets."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int

    def to(self, device) -> "Splits":
        move = lambda pair: tuple(t.to(device) for t in pair)  # noqa: E731
        return Splits(move(self.train), move(self.val), move(self.test), self.num_classes)


def split_indices(num_samples: int, seed: int, val_fraction: float = VAL_FRACTION):
    """Random (train, validation) indices of the official training set, drawn from `seed`."""
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    num_train = int(num_samples * (1 - val_fraction))
    return order[:num_train], order[num_train:]


def load_splits(dataset: str, root: Path, seed: int) -> Splits:
    check_data_root(root)
    source = SOURCES[SOURCE_OF[dataset]]
    images, labels = source.load(source.name, Path(root), "train")
    train_idx, val_idx = split_indices(len(images), seed)
    test = source.load(source.name, Path(root), "test")
    return Splits((images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx]),
                  test, source.num_classes)
