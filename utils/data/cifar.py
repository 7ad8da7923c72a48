"""CIFAR-10 and CIFAR-100 from the official python-pickle files, in torchvision's layout:
`<data_root>/cifar-10-batches-py/data_batch_1..5, test_batch` and
`<data_root>/cifar-100-python/train, test`."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from utils.data.files import read_checked
from utils.errors import DataError

# folder, train files, test files, label key, md5 of every official file
LAYOUT = {
    "CIFAR10": ("cifar-10-batches-py",
                ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
                ["test_batch"], b"labels"),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
CHECKSUMS = {
    "CIFAR10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "CIFAR100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}
ARCHIVES = {"CIFAR10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "CIFAR100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}


def _read_batch(path: Path, md5: str, dataset: str, root: Path, label_key: bytes):
    # The checksum is verified before unpickling, so only the official files are unpickled.
    batch = pickle.loads(read_checked(path, md5, dataset, root), encoding="bytes")
    try:
        data, labels = batch[b"data"], batch[label_key]
    except (KeyError, TypeError):
        raise DataError(f"{dataset}: {path} has no {b'data'!r} / {label_key!r} entries") from None
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, np.int64)


def load_cifar_split(dataset: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of the 'train' or 'test' split."""
    folder, train_files, test_files, label_key = LAYOUT[dataset]
    parts = [_read_batch(root / folder / name, CHECKSUMS[dataset][name], dataset, root, label_key)
             for name in (train_files if split == "train" else test_files)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)
