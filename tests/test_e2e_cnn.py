"""main_class_cnn.py end to end on small files in the official formats: every released CNN
config builds and trains a couple of steps, the run directory is complete, and bad input is
refused with a clear error."""
import json
import subprocess
import sys

import pytest
from conftest import REPO

import ccl.experiment as experiment
import yaml
from ccl.scripts import CNN

CONFIGS = sorted(path.stem for path in (REPO / "yaml/cnn").glob("*.yaml"))
# one small step per epoch (the tiny training sets hold 45 CIFAR, 18 STL-10 or 54 digit images)
QUICK = ("--epochs", "1", "--batchsize", "2", "--train_batches_per_epoch", "1", "--device", "cpu")
WITH_RUN_DIRECTORY_TEST = ("cifar10_ccl", "cifar10_bp")


def run_cnn(*args) -> int:
    return experiment.main(CNN, list(args))


def test_every_released_config_is_here():
    released = ["cifar100_bp", "cifar100_ccl", "cifar10_bp", "cifar10_bp_pool", "cifar10_ccl",
                "fmnist_bp", "fmnist_ccl", "mnist_bp", "mnist_ccl", "stl10_bp", "stl10_ccl"]
    paper_figure_6 = ["mnist_bp_fig6", "mnist_ccl_fig6"]  # this project's (docs/ANALYSES.md)
    assert CONFIGS == sorted(released + paper_figure_6)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c not in WITH_RUN_DIRECTORY_TEST])
def test_config_trains_a_step(tiny_cnn_data, tmp_path, config):
    data_root, _ = tiny_cnn_data
    out = tmp_path / "run"
    assert run_cnn("--yaml", str(REPO / f"yaml/cnn/{config}.yaml"), "--data_root", str(data_root),
                   "--out_dir", str(out), *QUICK) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["steps"] == 1
    assert 0.0 <= results["test_acc"] <= 1.0


def _check_run_directory(out, architecture):
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["run"]["script"] == "main_class_cnn.py"
    assert saved["training"]["lr_F"] == 0.5 and saved["dataset"]["batchsize"] == 2
    assert saved["method"]["architecture"] == architecture
    assert saved["dataset"]["augment_validation"] == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and [row["step"] for row in rows] == [1, 2]
    assert all(0 <= row["val_acc"] <= 1 for row in rows)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["seed"] == 2023 and results["dataset"] == "CIFAR10"
    assert (out / "best.pt").is_file() and (out / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_ccl_run_from_the_command_line(tiny_cnn_data, tmp_path):
    """As a user runs it: a separate process, exit code 0, the run directory complete."""
    data_root, checksum_file = tiny_cnn_data
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(REPO / "tests/launch.py"), str(checksum_file),
                           "main_class_cnn.py", "--yaml", "yaml/cnn/cifar10_ccl.yaml",
                           "--data_root", str(data_root), "--out_dir", str(out), *QUICK,
                           "--epochs", "2", "--lr_F", "0.5"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "test_acc" in done.stdout
    _check_run_directory(out, "cnn_pool")


def test_bp_run_directory(tiny_cnn_data, tmp_path):
    data_root, _ = tiny_cnn_data
    out = tmp_path / "run"
    assert run_cnn("--yaml", str(REPO / "yaml/cnn/cifar10_bp.yaml"), "--data_root", str(data_root),
                   "--out_dir", str(out), *QUICK, "--epochs", "2", "--lr_F", "0.5") == 0
    _check_run_directory(out, "cnn")


def test_same_seed_same_run_other_seed_other_run(tiny_cnn_data, tmp_path):
    data_root, _ = tiny_cnn_data
    losses = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = tmp_path / name
        assert run_cnn("--yaml", str(REPO / "yaml/cnn/cifar10_ccl.yaml"), "--data_root", str(data_root),
                       "--out_dir", str(out), "--seed", seed, *QUICK) == 0
        losses[name] = json.loads((out / "metrics.jsonl").read_text())["train_loss"]
    assert losses["a"] == losses["b"] != losses["c"]


@pytest.mark.parametrize("flags, message", [
    (("--architecture", "simple_linear"), "architecture cnn or cnn_pool"),
    (("--dataset", "MNIST"), "dataset CIFAR10 or CIFAR100 or MNIST_CNN"),
    (("--num_chn", "1"), "num_chn is 1 but the images of dataset CIFAR10 have 3"),
    (("--augment_validation", "2"), "augment_validation must be one of 0, 1"),
])
def test_bad_config_exits_2_with_the_fix(tiny_cnn_data, tmp_path, capsys, flags, message):
    data_root, _ = tiny_cnn_data
    assert run_cnn("--yaml", str(REPO / "yaml/cnn/cifar10_ccl.yaml"), "--data_root", str(data_root),
                   "--out_dir", str(tmp_path / "run"), *flags) == 2
    assert message in capsys.readouterr().err


def test_missing_dataset_exits_1_naming_the_archive(tmp_path, capsys):
    assert run_cnn("--yaml", str(REPO / "yaml/cnn/cifar100_ccl.yaml"), "--data_root", str(tmp_path / "none"),
                   "--out_dir", str(tmp_path / "run"), "--device", "cpu") == 1
    error = capsys.readouterr().err
    assert "cifar-100-python.tar.gz" in error and "python prepare_data.py CIFAR100" in error
