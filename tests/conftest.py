import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # test helpers: golden, tiny_data

from tiny_data import write_checksum_file, write_idx_dataset, write_stl10_dataset  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A data root with small MNIST IDX files that the real loader accepts. Returns
    (data_root, checksum_file) - the file is for subprocess runs through tests/launch.py."""
    import utils.data.mnist as mnist

    root = tmp_path / "data"
    checksums = write_idx_dataset(root, "MNIST")
    monkeypatch.setitem(mnist.CHECKSUMS, "MNIST", checksums)
    checksum_file = tmp_path / "checksums.json"
    write_checksum_file(checksum_file, {"utils.data.mnist": {"MNIST": checksums}})
    return root, checksum_file


@pytest.fixture
def tiny_stl10(tmp_path, monkeypatch):
    """A data root with small STL-10 binaries that the real loader accepts. Returns
    (data_root, checksum_file), as `tiny_mnist`."""
    import utils.data.stl10 as stl10

    root = tmp_path / "data"
    checksums = write_stl10_dataset(root)
    for name, md5 in checksums.items():
        monkeypatch.setitem(stl10.CHECKSUMS, name, md5)
    checksum_file = tmp_path / "checksums.json"
    write_checksum_file(checksum_file, {"utils.data.stl10": checksums})
    return root, checksum_file


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run in an empty directory, so default run directories land in tmp_path/runs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
