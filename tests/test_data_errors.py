"""Missing, truncated or corrupted dataset files (plain or .gz) stop the run with a DataError
that names the file, the md5 expected and found, and the fix; exit code 1, no traceback."""
import gzip
import hashlib
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runs import MLP_YAML, run_mlp

import utils.data.cifar as cifar
from utils.data.files import read_checked
from utils.data.mnist import load_idx_split
from utils.errors import DataError

TRAIN_IMAGES = "train-images-idx3-ubyte"


def raw(data_root):
    return data_root / "MNIST" / "raw"


def load_error(data_root) -> str:
    with pytest.raises(DataError) as caught:
        load_idx_split("MNIST", data_root, "train")
    return str(caught.value)


def gzip_all(folder):
    """Replace every file by its .gz, as torchvision's download leaves them."""
    for path in list(folder.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()


def test_the_tiny_files_load(tiny_mnist):
    images, labels = load_idx_split("MNIST", tiny_mnist[0], "train")
    assert images.shape == (600, 1, 28, 28) and labels.shape == (600,)


def test_a_missing_file_is_named_with_the_command_that_fetches_it(tiny_mnist):
    root = tiny_mnist[0]
    (raw(root) / TRAIN_IMAGES).unlink()
    message = load_error(root)
    assert f"file {raw(root) / TRAIN_IMAGES} is missing" in message
    assert f"python prepare_data.py MNIST --data_root {root}" in message


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "empty"])
def test_a_damaged_file_names_the_file_both_checksums_and_the_fix(tiny_mnist, damage):
    root, _ = tiny_mnist
    path = raw(root) / TRAIN_IMAGES
    data = bytearray(path.read_bytes())
    expected = hashlib.md5(data).hexdigest()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "corrupted":
        data[1000] ^= 0xFF
    else:
        data = b""
    path.write_bytes(bytes(data))
    message = load_error(root)
    assert str(path) in message and "is corrupted or not the official file" in message
    assert f"md5 {hashlib.md5(data).hexdigest()}, expected {expected}" in message
    assert f"Delete it and run `python prepare_data.py MNIST --data_root {root}`" in message


def test_gz_files_load_and_are_checked_after_decompressing(tiny_mnist):
    root = tiny_mnist[0]
    plain = load_idx_split("MNIST", root, "train")
    gzip_all(raw(root))
    images, labels = load_idx_split("MNIST", root, "train")
    assert (images == plain[0]).all() and (labels == plain[1]).all()

    path = raw(root) / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-7]))  # valid gzip, short content
    message = load_error(root)
    assert str(path) in message and "(of the uncompressed data)" in message


@pytest.mark.parametrize("cut", [10, 200, -8])
def test_a_truncated_gz_file_is_a_data_error(tiny_mnist, cut):
    root = tiny_mnist[0]
    gzip_all(raw(root))
    path = raw(root) / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(path.read_bytes()[:cut])
    message = load_error(root)
    assert str(path) in message and "prepare_data.py MNIST" in message


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_any_bit_flip_in_a_gz_file_is_caught(tmp_path_factory, seed):
    """Whatever byte is damaged (header, deflate stream, CRC, length), loading either gives
    the original bytes or a DataError; never another exception."""
    folder = tmp_path_factory.mktemp("gz")
    original = bytes(range(256)) * 40
    data = bytearray(gzip.compress(original))
    rng = random.Random(seed)
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path = folder / "file"
    path.with_name("file.gz").write_bytes(bytes(data))
    try:
        assert read_checked(path, hashlib.md5(original).hexdigest(), "MNIST", folder,
                            allow_gzip=True) == original
    except DataError as error:
        assert "file.gz" in str(error)


def test_an_unreadable_file_is_a_data_error(tiny_mnist, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("pathlib.Path.read_bytes", denied)  # root may read anything: simulate
    message = load_error(tiny_mnist[0])
    assert f"{TRAIN_IMAGES} cannot be read" in message and "Permission denied" in message


def test_a_damaged_cifar_pickle_is_never_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    official = pickle.dumps({b"data": [[0] * 3072], b"fine_labels": [0]})
    for name in ("train", "test"):
        (folder / name).write_bytes(official[:-5])  # truncated
    meta = pickle.dumps({b"fine_label_names": [b"class"]})
    (folder / "meta").write_bytes(meta)
    monkeypatch.setitem(cifar.CHECKSUMS, "CIFAR100",
                        {"train": hashlib.md5(official).hexdigest(), "test": "0" * 32,
                         "meta": hashlib.md5(meta).hexdigest()})
    with pytest.raises(DataError) as caught:
        cifar.load_cifar_split("CIFAR100", tmp_path, "train")
    assert f"{folder / 'train'} is corrupted" in str(caught.value)
    assert hashlib.md5(official).hexdigest() in str(caught.value)


def test_the_entry_script_reports_a_data_error_with_exit_1(tiny_mnist, tmp_path, capsys):
    root = tiny_mnist[0]
    (raw(root) / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")
    code = run_mlp("--yaml", MLP_YAML, "--data_root", str(root), "--device", "cpu",
                   "--out_dir", str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("main_class_mlp.py: error: MNIST: ") and "t10k-labels-idx1-ubyte" in err
    assert "expected" in err and "prepare_data.py" in err


def test_prepare_reports_every_dataset_in_one_go(tiny_mnist, monkeypatch, capsys):
    import utils.data.prepare as prepare

    def offline(dataset, root):
        raise OSError("no internet")
    monkeypatch.setattr(prepare, "_torchvision_download", offline)
    root = tiny_mnist[0]
    assert prepare.main(["CIFAR10", "MNIST", "STL10", "--data_root", str(root)]) == 1
    printed = capsys.readouterr()
    lines = [line.split(None, 1) for line in printed.out.splitlines() if line.startswith("  ")]
    assert [(name, state.split(":")[0]) for name, state in lines] == [
        ("CIFAR10", "missing"), ("MNIST", "ready"), ("STL10", "missing")]
    assert f"unpack it into {root}/ so that {root}/stl10_binary/ holds train_X.bin" in printed.out
    assert "CIFAR10, STL10 missing" in printed.err


@pytest.mark.parametrize("under", [False, True])
def test_a_data_root_that_is_a_file_is_named_as_such(tmp_path, capsys, under):
    """Not "the data is missing, run prepare_data.py", which would then fail on the same file."""
    file = tmp_path / "data.txt"
    file.write_text("not a folder")
    root = file / "sub" if under else file
    code = run_mlp("--yaml", MLP_YAML, "--data_root", str(root), "--device", "cpu",
                   "--out_dir", str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"--data_root {root} " in err and "not a directory" in err and "prepare_data.py" not in err


def test_prepare_with_a_data_root_that_is_a_file(tmp_path, monkeypatch, capsys):
    import utils.data.prepare as prepare

    monkeypatch.setattr(prepare, "_torchvision_download", lambda dataset, root: pytest.fail("downloaded"))
    file = tmp_path / "data"
    file.write_text("")
    assert prepare.main(["MNIST", "--data_root", str(file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prepare_data.py: error: ") and f"--data_root {file} is not a directory" in err
    with pytest.raises(DataError, match="not a directory"):
        prepare.prepare("MNIST", file, log=lambda line: None)


def test_a_failed_download_is_reported_whole_on_one_line(tiny_mnist, monkeypatch):
    import utils.data.prepare as prepare

    def offline(dataset, root):
        try:
            raise OSError("[Errno -2] Name or service not known")
        except OSError as reason:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/, "
                               "got:\n<urlopen error>\n") from reason
    monkeypatch.setattr(prepare, "_torchvision_download", offline)
    monkeypatch.setattr(prepare, "REGISTRY_FALLBACK", {})
    lines = []
    with pytest.raises(DataError):
        prepare.prepare("MNIST", tiny_mnist[0] / "empty", log=lines.append)
    assert lines[0] == ("MNIST: torchvision download failed (RuntimeError: Error downloading "
                        "train-images-idx3-ubyte.gz: Tried https://mirror/, got: <urlopen error> "
                        "<- OSError: [Errno -2] Name or service not known)")
