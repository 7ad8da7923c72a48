import importlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # test helpers: golden, tiny_data

from tiny_data import write_checksum_file, write_cifar10, write_cifar100, write_idx_dataset, write_stl10  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# One intra-op thread: tiny tensors gain nothing from more, and on a busy two-core machine extra
# threads spin against each other (tens of times slower); CPU sums also depend on the count.
torch.set_num_threads(1)


def accept_test_files(monkeypatch, tables: dict, checksum_file: Path) -> None:
    """Make the real loaders accept the files a test wrote: `tables` maps a module of
    utils.data to the entries of its CHECKSUMS table to replace. Patched here, and written to
    `checksum_file` for subprocess runs through tests/launch.py."""
    for module_name, entries in tables.items():
        table = importlib.import_module(module_name).CHECKSUMS
        for key, value in entries.items():
            monkeypatch.setitem(table, key, value)
    write_checksum_file(checksum_file, tables)


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A data root with small MNIST IDX files that the real loader accepts. Returns
    (data_root, checksum_file) - the file is for subprocess runs through tests/launch.py."""
    root = tmp_path / "data"
    checksum_file = tmp_path / "checksums.json"
    accept_test_files(monkeypatch, {"utils.data.mnist": {"MNIST": write_idx_dataset(root, "MNIST")}},
                      checksum_file)
    return root, checksum_file


@pytest.fixture
def tiny_cnn_data(tmp_path, monkeypatch):
    """A data root with small files, in the official formats, of every dataset that
    main_class_cnn.py reads: CIFAR-10, CIFAR-100, STL-10, MNIST and FashionMNIST. Returns
    (data_root, checksum_file) as `tiny_mnist`."""
    root = tmp_path / "data"
    checksum_file = tmp_path / "checksums.json"
    accept_test_files(monkeypatch, {
        "utils.data.cifar": {"CIFAR10": write_cifar10(root), "CIFAR100": write_cifar100(root)},
        "utils.data.stl10": write_stl10(root),
        "utils.data.mnist": {name: write_idx_dataset(root, name, n_train=60, n_test=20)
                             for name in ("MNIST", "FashionMNIST")},
    }, checksum_file)
    return root, checksum_file


@pytest.fixture
def tiny_stl10(tmp_path, monkeypatch):
    """A data root with small STL-10 binaries that the real loader accepts. Returns
    (data_root, checksum_file), as `tiny_mnist`."""
    import utils.data.stl10 as stl10

    root = tmp_path / "data"
    checksums = write_stl10(root)
    for name, md5 in checksums.items():
        monkeypatch.setitem(stl10.CHECKSUMS, name, md5)
    checksum_file = tmp_path / "checksums.json"
    write_checksum_file(checksum_file, {"utils.data.stl10": checksums})
    return root, checksum_file


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module whose tests compare in-process sums with a subprocess's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run in an empty directory, so default run directories land in tmp_path/runs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
