"""The CNN datasets: readers of the official CIFAR/STL-10 files (checked against torchvision's
own readers on the files the tests write), their errors, and the batched augmentations."""
import hashlib
import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets as tv
from golden import load_fixture
from PIL import Image
from tiny_data import coloured_images

from ccl.config import build_config
from utils.data import load_splits
from utils.data.cifar import CHECKSUMS as CIFAR_CHECKSUMS
from utils.data.cifar import LAYOUT, load_cifar_split
from utils.data.prepare import prepare
from utils.data.recipes import CNN_TRANSFORMS, cnn_data
from utils.data.stl10 import ARCHIVE as STL10_ARCHIVE
from utils.data.stl10 import load_stl10_split
from utils.data.transforms import RandomCrop, Resize, random_hflip
from utils.errors import DataError


def _torchvision_cifar(dataset, root, train):
    """torchvision's reader, told the checksums of the test files."""
    base = getattr(tv, dataset)
    checksums = CIFAR_CHECKSUMS[dataset]
    layout = LAYOUT[dataset]
    patched = type("TestFiles", (base,), {
        "train_list": [[name, checksums[name]] for name in layout.train],
        "test_list": [[name, checksums[name]] for name in layout.test],
        "meta": {**base.meta, "md5": checksums[layout.meta]},
    })
    return patched(str(root), train=train)


@pytest.mark.parametrize("dataset", ["CIFAR10", "CIFAR100"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_reader_agrees_with_torchvision(tiny_cnn_data, dataset, split):
    root, _ = tiny_cnn_data
    images, labels = load_cifar_split(dataset, root, split)
    reference = _torchvision_cifar(dataset, root, train=(split == "train"))
    assert images.dtype == torch.uint8 and images.shape == (len(reference), 3, 32, 32)
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), reference.data)
    assert labels.tolist() == list(reference.targets)


@pytest.mark.parametrize("split", ["train", "test"])
def test_stl10_reader_agrees_with_torchvision(tiny_cnn_data, monkeypatch, split):
    root, _ = tiny_cnn_data
    monkeypatch.setattr(tv.STL10, "_check_integrity", lambda self: True)
    reference = tv.STL10(str(root), split=split)
    images, labels = load_stl10_split("STL10", root, split)
    assert images.shape == (len(reference), 3, 96, 96)
    assert np.array_equal(images.numpy(), reference.data)
    assert labels.tolist() == reference.labels.tolist() and labels.min() >= 0 and labels.max() <= 9
    # the bright band written on the left edge is on the left: the layout is not transposed
    assert (images[..., :12] == 255).all()


def test_split_is_ninety_ten_and_seeded(tiny_cnn_data):
    root, _ = tiny_cnn_data
    first, again, other = (load_splits("CIFAR10", root, seed) for seed in (1, 1, 2))
    assert (len(first.train[0]), len(first.val[0]), len(first.test[0])) == (45, 5, 20)
    assert torch.equal(first.val[0], again.val[0])
    assert not torch.equal(first.val[0], other.val[0])


@pytest.mark.parametrize("dataset, path, archive", [
    ("CIFAR10", "cifar-10-batches-py/data_batch_3", LAYOUT["CIFAR10"].archive),
    ("CIFAR10", "cifar-10-batches-py/batches.meta", LAYOUT["CIFAR10"].archive),
    ("CIFAR100", "cifar-100-python/meta", LAYOUT["CIFAR100"].archive),
    ("STL10", "stl10_binary/test_y.bin", STL10_ARCHIVE),
])
def test_missing_file_names_the_file_the_command_and_the_archive(tiny_cnn_data, dataset, path, archive):
    root, _ = tiny_cnn_data
    (root / path).unlink()
    split = "test" if "test" in path else "train"
    load = load_stl10_split if dataset == "STL10" else load_cifar_split
    with pytest.raises(DataError) as error:
        load(dataset, root, split)
    message = str(error.value)
    assert "missing" in message and str(root / path) in message
    assert f"python prepare_data.py {dataset} --data_root {root}" in message and archive in message


@pytest.mark.parametrize("dataset, path", [("CIFAR100", "cifar-100-python/train"),
                                           ("STL10", "stl10_binary/train_X.bin")])
def test_corrupted_file_is_refused_before_it_is_read(tiny_cnn_data, dataset, path):
    root, _ = tiny_cnn_data
    data = bytearray((root / path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / path).write_bytes(bytes(data))
    load = load_stl10_split if dataset == "STL10" else load_cifar_split
    with pytest.raises(DataError, match="corrupted or not the official file: md5"):
        load(dataset, root, "train")


def _rewrite_pickle(monkeypatch, root, name, content):
    path = root / "cifar-10-batches-py" / name
    path.write_bytes(pickle.dumps(content, protocol=2))
    monkeypatch.setitem(CIFAR_CHECKSUMS["CIFAR10"], name, hashlib.md5(path.read_bytes()).hexdigest())


def test_cifar_batch_without_data_is_a_data_error(tiny_cnn_data, monkeypatch):
    root, _ = tiny_cnn_data
    _rewrite_pickle(monkeypatch, root, "test_batch", {b"labels": [1, 2]})
    with pytest.raises(DataError, match="has no b'data' / b'labels' entries"):
        load_cifar_split("CIFAR10", root, "test")


def test_cifar_labels_beyond_the_meta_classes_are_a_data_error(tiny_cnn_data, monkeypatch):
    root, _ = tiny_cnn_data
    _rewrite_pickle(monkeypatch, root, "batches.meta", {b"label_names": [b"cat", b"dog"]})
    with pytest.raises(DataError, match="labels outside 0..1"):
        load_cifar_split("CIFAR10", root, "test")


def test_prepare_without_internet_names_the_archive_and_the_folder(tmp_path, monkeypatch):
    def offline(dataset, root):
        raise OSError("no route to host")
    monkeypatch.setattr("utils.data.prepare._torchvision_download", offline)
    with pytest.raises(DataError) as error:
        prepare("CIFAR10", tmp_path, log=lambda message: None)
    message = str(error.value)
    assert LAYOUT["CIFAR10"].archive in message and f"{tmp_path}/cifar-10-batches-py/" in message
    assert "batches.meta" in message


# --- augmentation -----------------------------------------------------------------------------

def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _digits(n=64):
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 3:25, 2:8] = 255  # a bar near the left edge: flips and shifts move it
    return images


def test_hflip_flips_about_half_the_images():
    x = torch.arange(64 * 3 * 4 * 5, dtype=torch.float32).view(64, 3, 4, 5)
    out = random_hflip(x, _generator(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped ^ kept).all() and 16 < flipped.sum() < 48


@pytest.mark.parametrize("mode", ["edge", "zeros"])
def test_crop_takes_a_window_of_the_padded_image(mode):
    x = torch.rand(32, 3, 8, 8)
    out = RandomCrop(2, mode=mode)(x, _generator(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate" if mode == "edge" else "constant")
    offsets = set()
    for image, source in zip(out, padded):
        found = [(top, left) for top in range(5) for left in range(5)
                 if torch.equal(image, source[:, top:top + 8, left:left + 8])]
        assert found, "every output is a window of the padded input"
        offsets.add(found[0])
    assert len(offsets) > 5, "offsets vary between images"


def test_crop_to_a_larger_size_takes_every_offset_of_the_padding():
    out = RandomCrop(4, mode="zeros", size=32)(_digits(256).float(), _generator(0))
    assert out.shape == (256, 1, 32, 32)
    bar_left = (out[:, 0, 14] > 0).float().argmax(1)  # bar at column 2 of 28 + pad 4 - offset
    assert set(bar_left.tolist()) == {6 - offset for offset in range(5)}


@pytest.mark.parametrize("dataset", list(CNN_TRANSFORMS))
def test_cnn_transforms_shapes_ranges_and_seed(dataset):
    channels, size = {"CIFAR10": (3, 32), "CIFAR100": (3, 32), "STL10_cls": (3, 96)}.get(dataset, (1, 28))
    images = torch.from_numpy(coloured_images(16, 10, size, np.random.default_rng(0))[0][:, :channels])
    train, evaluate = CNN_TRANSFORMS[dataset]
    outputs = [train(images, _generator(seed)) for seed in (0, 0, 1)]
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])
    test = evaluate(images)
    for out in (outputs[0], test):
        assert out.shape == (16, channels, 32, 32) and out.dtype == torch.float32
    if dataset.startswith("CIFAR"):  # ImageNet normalisation of values in [0, 1]
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        low, high = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
        assert ((outputs[0] >= low - 1e-6) & (outputs[0] <= high + 1e-6)).all()
        torch.testing.assert_close(test, (images / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    else:  # no normalisation
        assert outputs[0].min() >= 0 and outputs[0].max() <= 1 and test.min() >= 0 and test.max() <= 1


def test_digits_train_augments_and_eval_resizes():
    train, evaluate = CNN_TRANSFORMS["MNIST_CNN"]
    out = train(_digits(), _generator(0))
    left_bar = out[:, 0, 14, :16].amax(1) > 0
    assert left_bar.any() and not left_bar.all(), "some digits are flipped"
    expected = torch.nn.functional.interpolate(_digits().float() / 255, size=(32, 32), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(evaluate(_digits()), expected)


def test_uint8_resize_reproduces_pil():
    """STL10_cls shrinks 96x96 PIL images to 32x32 (torchvision Resize before ToTensor)."""
    images = coloured_images(8, 10, 96, np.random.default_rng(1))[0]
    images[:4] = np.random.default_rng(2).integers(0, 256, images[:4].shape)  # pure noise too
    pil = np.stack([np.asarray(Image.fromarray(image.transpose(1, 2, 0)).resize((32, 32), Image.BILINEAR))
                    for image in images]).transpose(0, 3, 1, 2)
    ours = Resize(32)(torch.from_numpy(images))
    assert ours.dtype == torch.uint8
    difference = (ours.int() - torch.from_numpy(pil).int()).abs()
    assert difference.max() <= 1 and (difference == 0).float().mean() > 0.999


def _config(dataset, **changes):
    values = {**load_fixture("cnn_cifar10_ccl.pt")["config"], "dataset": dataset, "batchsize": 4}
    return build_config(values, changes, {}, "test")


@pytest.mark.parametrize("augment, differs", [(0, False), (1, True)])
def test_validation_is_unaugmented_unless_asked(tiny_cnn_data, augment, differs):
    root, _ = tiny_cnn_data
    data = cnn_data(_config("CIFAR10", augment_validation=augment), load_splits("CIFAR10", root, 0))
    val_inputs, _ = next(data.val.epoch())
    images = data.val.images[:len(val_inputs)]
    plain = CNN_TRANSFORMS["CIFAR10"][1](images)
    assert (not torch.equal(val_inputs, plain)) == differs
    assert torch.equal(val_inputs, next(data.val.epoch())[0]), "the same batches at every validation"
    assert data.input_shape == (3, 32, 32)


@pytest.mark.parametrize("dataset", ["MNIST_CNN", "CIFAR10"])
def test_augment_0_makes_training_batches_as_evaluation_batches(tiny_cnn_data, dataset):
    """MNIST_CNN then trains on the digits resized to 32x32, as it is evaluated: no padded crops,
    no flips."""
    root, _ = tiny_cnn_data
    splits = load_splits(dataset.removesuffix("_CNN"), root, 0)
    for augment in (0, 1):
        data = cnn_data(_config(dataset, augment=augment), splits)
        inputs, _ = next(data.train.epoch())
        unaugmented = CNN_TRANSFORMS[dataset][1](data.train.images)
        as_evaluated = [any(torch.equal(image, candidate) for candidate in unaugmented) for image in inputs]
        assert all(as_evaluated) == (augment == 0)
