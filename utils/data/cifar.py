"""CIFAR-10 and CIFAR-100 from the official python-pickle files, in torchvision's layout:
`<data_root>/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta` and
`<data_root>/cifar-100-python/train, test, meta`.

Each batch pickles a dict whose `data` is an (N, 3072) uint8 array (the 1024 red values of an
image row by row, then green, then blue) and whose labels are a list of N ints; the meta file
holds the class names."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.data.files import read_checked
from utils.errors import DataError


@dataclass(frozen=True)
class Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: bytes
    meta: str
    names_key: bytes
    archive: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)


LAYOUT = {
    "CIFAR10": Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      ("test_batch",), b"labels", "batches.meta", b"label_names",
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "CIFAR100": Layout("cifar-100-python", ("train",), ("test",), b"fine_labels", "meta",
                       b"fine_label_names",
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
# md5 of every official file
CHECKSUMS = {
    "CIFAR10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "CIFAR100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}
IMAGE_SHAPE = (3, 32, 32)


def _unpickle(dataset: str, root: Path, name: str, keys: tuple[bytes, ...]) -> list:
    layout = LAYOUT[dataset]
    path = root / layout.folder / name
    # The checksum is verified before unpickling, so only the official files are unpickled.
    content = pickle.loads(read_checked(path, CHECKSUMS[dataset][name], dataset, root,
                                        archive=layout.archive), encoding="bytes")
    try:
        return [content[key] for key in keys]
    except (KeyError, TypeError):
        raise DataError(f"{dataset}: {path} has no {' / '.join(map(repr, keys))} entries") from None


def load_cifar_split(dataset: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64) of the 'train' or 'test' split."""
    layout = LAYOUT[dataset]
    (class_names,) = _unpickle(dataset, root, layout.meta, (layout.names_key,))
    images, labels = [], []
    for name in layout.train if split == "train" else layout.test:
        data, batch_labels = _unpickle(dataset, root, name, (b"data", layout.label_key))
        data, batch_labels = np.asarray(data, dtype=np.uint8), np.asarray(batch_labels, np.int64)
        if data.ndim != 2 or data.shape[1] != np.prod(IMAGE_SHAPE) or len(data) != len(batch_labels):
            raise DataError(f"{dataset}: {root / layout.folder / name} holds data of shape "
                            f"{data.shape} and {len(batch_labels)} labels, expected (N, 3072) and N")
        images.append(data.reshape(-1, *IMAGE_SHAPE))
        labels.append(batch_labels)
    labels = np.concatenate(labels)
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise DataError(f"{dataset} {split}: labels outside 0..{len(class_names) - 1}, the classes "
                        f"of {layout.meta}")
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(labels)
