"""Small datasets in the official on-disk formats, written by the tests, and the checksum
tables that make the real loaders accept them."""
from __future__ import annotations

import hashlib
import json
import pickle
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


def coloured_images(n: int, num_classes: int, size: int, rng: np.random.Generator):
    """(n, 3, size, size) uint8 images whose label is their colour (plus noise and a bright
    left edge, so a flip shows), and their labels."""
    labels = rng.integers(0, num_classes, n)
    palette = rng.integers(40, 216, (num_classes, 3))
    noise = rng.integers(-30, 31, (n, 3, size, size))
    images = np.clip(palette[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
    images[:, :, :, : size // 8] = 255
    return images, labels


class _Python2Pickler(pickle._Pickler):
    """Pickles `bytes` as Python 2 `str`, as in the official CIFAR files (written by Python 2):
    read back as bytes with encoding='bytes' (this project) and as str with 'latin1'
    (torchvision)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def _write_pickle(path: Path, content: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        _Python2Pickler(file, protocol=2).dump(content)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes, title: bytes) -> dict:
    return {b"batch_label": title, label_key: [int(label) for label in labels],
            b"data": images.reshape(len(images), -1),
            b"filenames": [b"image_%d.png" % i for i in range(len(images))]}


def write_cifar10(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """cifar-10-batches-py/ as in the official archive: five training batches, the test batch
    and batches.meta; returns {filename: md5}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    images, labels = coloured_images(n_train, 10, 32, rng)
    checksums = {}
    for index, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        checksums[f"data_batch_{index}"] = _write_pickle(
            folder / f"data_batch_{index}",
            _cifar_batch(images[part], labels[part], b"labels", b"training batch %d of 5" % index))
    checksums["test_batch"] = _write_pickle(
        folder / "test_batch", _cifar_batch(*coloured_images(n_test, 10, 32, rng), b"labels",
                                            b"testing batch 1 of 1"))
    checksums["batches.meta"] = _write_pickle(folder / "batches.meta", {
        b"num_cases_per_batch": len(np.array_split(np.arange(n_train), 5)[0]),
        b"label_names": [b"class%d" % i for i in range(10)], b"num_vis": 3072})
    return checksums


def write_cifar100(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, str]:
    """cifar-100-python/ as in the official archive: train, test and meta, fine and coarse
    labels; returns {filename: md5}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    checksums = {}
    for name, n in (("train", n_train), ("test", n_test)):
        images, labels = coloured_images(n, 100, 32, rng)
        batch = _cifar_batch(images, labels, b"fine_labels", name.encode())
        batch[b"coarse_labels"] = [int(label) // 5 for label in labels]
        checksums[name] = _write_pickle(folder / name, batch)
    checksums["meta"] = _write_pickle(folder / "meta", {
        b"fine_label_names": [b"fine%d" % i for i in range(100)],
        b"coarse_label_names": [b"coarse%d" % i for i in range(20)]})
    return checksums


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, str]:
    """stl10_binary/{train,test}_{X,y}.bin as in the official archive: each image channel by
    channel, each channel column-major; labels 1..10 as bytes. Returns {filename: md5}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = coloured_images(n, 10, 96, rng)
        for name, data in ((f"{split}_X.bin", images.transpose(0, 1, 3, 2).tobytes()),
                           (f"{split}_y.bin", (labels + 1).astype(np.uint8).tobytes())):
            (folder / name).write_bytes(data)
            checksums[name] = hashlib.md5(data).hexdigest()
    return checksums


def write_checksum_file(path: Path, tables: dict) -> None:
    """For subprocess runs: tests/launch.py reads this and patches the loaders' tables."""
    Path(path).write_text(json.dumps(tables))
