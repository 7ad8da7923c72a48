"""MNIST and FashionMNIST from their IDX files, in torchvision's layout:
`<data_root>/MNIST/raw/train-images-idx3-ubyte` (or the same name + `.gz`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.data.files import read_checked
from utils.errors import DataError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# md5 of the official uncompressed files.
CHECKSUMS = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

_UBYTE = 0x08


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """An IDX file of unsigned bytes as an array of its declared shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise DataError(f"{name} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{name}: IDX header declares shape {shape}, which does not match the "
                        f"file's {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_split(dataset: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) uint8, labels (N,) int64) of the 'train' or 'test' split."""
    folder = root / dataset / "raw"
    arrays = []
    for filename in IDX_FILES[split]:
        data = read_checked(folder / filename, CHECKSUMS[dataset][filename], dataset, root,
                            allow_gzip=True)
        arrays.append(parse_idx(data, filename))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{dataset} {split}: {len(images)} images of shape {images.shape[1:]} "
                        f"and {len(labels)} labels do not match")
    return (torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)))
