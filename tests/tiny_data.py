"""Small datasets in the official on-disk formats, written by the tests, and the checksum
tables that make the real loaders accept them."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def learnable_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images whose label is written in their brightness pattern, so a few steps of
    training visibly help."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for label in range(10):
        rows = slice(2 * label + 3, 2 * label + 6)
        images[labels == label, rows, 4:24] = 230
    return images, labels


def write_idx_dataset(root: Path, dataset: str = "MNIST", n_train: int = 600, n_test: int = 200,
                      seed: int = 0) -> dict[str, str]:
    """Four IDX files under root/<dataset>/raw; returns {filename: md5}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / dataset / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = learnable_digits(n, rng)
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = _idx_bytes(array)
            (folder / name).write_bytes(data)
            checksums[name] = hashlib.md5(data).hexdigest()
    return checksums


def write_checksum_file(path: Path, tables: dict) -> None:
    """For subprocess runs: tests/launch.py reads this and patches the loaders' tables."""
    Path(path).write_text(json.dumps(tables))


def write_stl10_dataset(root: Path, n_train: int = 20, n_test: int = 10,
                        seed: int = 0) -> dict[str, str]:
    """The four STL-10 binaries under root/stl10_binary (96x96 colour images of a few flat
    rectangles, labels 1..10); returns {filename: md5}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 40, (n, 3, 96, 96)).astype(np.uint8)
        for image in images:
            for _ in range(3):
                top, left = rng.integers(0, 64, 2)
                image[:, top:top + 32, left:left + 32] = rng.integers(60, 256, (3, 1, 1))
        labels = rng.integers(1, 11, n).astype(np.uint8)
        # The official layout stores each channel column-major: (N, C, W, H) in C order.
        files = {f"{split}_X.bin": images.transpose(0, 1, 3, 2).tobytes(),
                 f"{split}_y.bin": labels.tobytes()}
        for name, data in files.items():
            (folder / name).write_bytes(data)
            checksums[name] = hashlib.md5(data).hexdigest()
    return checksums
