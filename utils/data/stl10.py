"""STL-10 from the official binary files: `<data_root>/stl10_binary/{train,test}_{X,y}.bin`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.data.files import read_checked
from utils.errors import DataError

FOLDER = "stl10_binary"
CHECKSUMS = {
    "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
    "train_y.bin": "5a34089d4802c674881badbb80307741",
    "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
    "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
}
ARCHIVE = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
IMAGE_BYTES = 3 * 96 * 96
NUM_CLASSES = 10  # labels are stored as 1..10


def load_stl10_split(dataset: str, root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 96, 96) uint8, labels (N,) int64 in 0..9) of the 'train' or 'test' split."""
    folder = root / FOLDER
    x, y = (read_checked(folder / name, CHECKSUMS[name], dataset, root, archive=ARCHIVE)
            for name in (f"{split}_X.bin", f"{split}_y.bin"))
    if len(x) % IMAGE_BYTES or len(x) // IMAGE_BYTES != len(y):
        raise DataError(f"{dataset}: {folder}/{split}_X.bin holds {len(x) / IMAGE_BYTES:g} images "
                        f"but {split}_y.bin {len(y)} labels")
    if y and not 1 <= min(y) <= max(y) <= NUM_CLASSES:
        raise DataError(f"{dataset}: {folder}/{split}_y.bin holds labels outside 1..{NUM_CLASSES}")
    # Stored channel by channel, each channel column-major: transpose to (N, C, H, W).
    images = np.frombuffer(x, dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    labels = np.frombuffer(y, dtype=np.uint8).astype(np.int64) - 1
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)
