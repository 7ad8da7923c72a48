"""main_ae.py end to end on small STL-10 binaries: both released configs for a step, the run
directory, the reconstruction figure, and the BP-vs-CCL comparison figure."""
import json

import pytest
import torch
from conftest import REPO
from PIL import Image
from tiny_data import write_stl10

import ccl.experiment as experiment
import models.autoencoder
import utils.data.stl10 as stl10
from ccl.cli import parse_command_line
from ccl.figures.cli import main as figures_main
from ccl.plots import (
    LABEL_WIDTH,
    PADDING,
    RECONSTRUCTIONS,
    TITLE_LINE_HEIGHT,
    figure_indices,
    save_reconstructions,
)
from ccl.scripts import AUTOENCODER
from utils.data import load_splits
from utils.data.recipes import ae_data

CONFIGS = {"BP": REPO / "yaml/cnn_ae/stl10_bp_legacy.yaml", "CCL": REPO / "yaml/cnn_ae/stl10_ccl_legacy.yaml"}
# One training step of 2 images, then validation on 2 and test on 4: a forward pass of this
# network costs about 0.2 s per image on a CPU core.
TINY = ("--batchsize", "2", "--train_batches_per_epoch", "1", "--epochs", "1", "--device", "cpu")
TEST_IMAGES = 4


def run_ae(*args) -> int:
    return experiment.main(AUTOENCODER, list(args))


def assert_figure(path, rows: int, images: int = TEST_IMAGES) -> None:
    """A PNG of `images` 96x96 images per row under a title of one or more lines."""
    with Image.open(path) as figure:
        assert figure.format == "PNG" and figure.mode == "RGB"
        width, height = figure.size
    assert width == LABEL_WIDTH + images * (96 + PADDING) + PADDING
    title = height - (rows * (96 + PADDING) + PADDING)
    assert title > 0 and title % TITLE_LINE_HEIGHT == 0


def accept(patch, checksums) -> None:
    for name, md5 in checksums.items():
        patch.setitem(stl10.CHECKSUMS, name, md5)


def fast_orthogonal(shape) -> torch.Tensor:
    """Stands in for the autoencoder's orthogonal init, which test_autoencoder.py checks: its QR
    of the 2048-channel weights would take most of this file's time on CPU."""
    return torch.randn(shape) / torch.Size(shape)[1:].numel() ** 0.5


@pytest.fixture(scope="module", autouse=True)
def quick_init():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.autoencoder, "orthogonal", fast_orthogonal)
        yield


@pytest.fixture(scope="module")
def stl10_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stl10")
    return root, write_stl10(root, n_train=20, n_test=TEST_IMAGES)


@pytest.fixture(scope="module")
def runs(stl10_files, tmp_path_factory):
    """Both released configs, one step each, on the same tiny STL-10 files."""
    data_root, checksums = stl10_files
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        accept(patch, checksums)
        for method, path in CONFIGS.items():
            assert run_ae("--yaml", str(path), "--data_root", str(data_root),
                          "--out_dir", str(out / method), *TINY) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["BP", "CCL"])
def test_run_directory(runs, method):
    out = runs / method
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["method"] == method
    assert 0 < results["test_mse"] < 1 and results["steps"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and 0 < rows[0]["val_mse"] < 1 and rows[0]["step"] == 1
    assert_figure(out / RECONSTRUCTIONS, rows=2)  # inputs, reconstructions


@pytest.mark.slow
def test_comparison_figure(runs, stl10_files, monkeypatch):
    accept(monkeypatch, stl10_files[1])
    out = runs / "bp_vs_ccl.png"
    assert figures_main(["compare", str(runs / "BP"), str(runs / "CCL"), "--out", str(out),
                         "--device", "cpu"]) == 0
    assert_figure(out, rows=3)  # inputs, BP, CCL


@pytest.mark.slow  # trains both autoencoders (the runs fixture)
def test_reconstructions_are_drawn_again_from_the_best_model(runs, stl10_files, monkeypatch, capsys):
    accept(monkeypatch, stl10_files[1])
    figure = runs / "CCL" / RECONSTRUCTIONS
    drawn_by_the_run = figure.read_bytes()
    figure.unlink()
    assert figures_main(["reconstructions", str(runs / "CCL"), "--device", "cpu"]) == 0
    assert figure.read_bytes() == drawn_by_the_run
    assert figures_main(["reconstructions", str(runs / "CCL"), "--out", str(runs / "again.png"),
                         "--device", "cpu"]) == 0
    assert_figure(runs / "again.png", rows=2)


def test_comparison_needs_finished_runs(tmp_path, capsys):
    assert figures_main(["compare", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_figure_shows_targets_that_differ_from_inputs(tiny_stl10, tmp_path):
    """With rot90 the figure has a target row; the 'model' here returns its input."""
    config, _ = parse_command_line(["--yaml", str(CONFIGS["CCL"]), "--task_transform", "rot90"],
                                   "main_ae.py", "", {"task": "autoencoder"})
    data = ae_data(config, load_splits(config.dataset, tiny_stl10[0], config.seed))

    class Echo(torch.nn.Module):
        def predict(self, x):
            return x

    save_reconstructions(Echo(), data, tmp_path)
    assert_figure(tmp_path / RECONSTRUCTIONS, rows=3, images=10)  # inputs, targets, reconstructions


@pytest.mark.parametrize("flag, value, message", [
    ("--task_transform", "none", "task_transform same, DropColor"),
    ("--bias_init", "none", "bias_init: zero"),
    ("--dataset", "CIFAR10", "dataset STL10"),
])
def test_configs_the_script_rejects(flag, value, message, capsys):
    assert run_ae("--yaml", str(CONFIGS["CCL"]), flag, value, "--device", "cpu") == 2
    assert message in capsys.readouterr().err


def test_legacy_configs_train_101_batches_per_epoch():
    for path in CONFIGS.values():
        config, _ = parse_command_line(["--yaml", str(path)], "main_ae.py", "", {"task": "autoencoder"})
        assert config.train_batches_per_epoch == 101


def test_figures_show_ten_fixed_images_spread_over_the_test_set():
    assert figure_indices(8000).tolist() == [0, 889, 1778, 2666, 3555, 4444, 5333, 6221, 7110, 7999]
    assert figure_indices(4).tolist() == [0, 1, 2, 3]
