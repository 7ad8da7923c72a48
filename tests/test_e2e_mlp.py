"""main_class_mlp.py end to end on small IDX files: the real loading code, a few epochs, the
run directory's files, and reproducibility from the seed."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from runs import with_loss

import ccl.experiment as experiment
import yaml
from ccl.scripts import MLP

YAML = str(REPO / "yaml/mlp/mnist_ccl.yaml")


def run_mlp(*args) -> int:
    return experiment.main(MLP, list(args))


@pytest.mark.parametrize("config", ["mnist_ccl", "mnist_bp"])
def test_training_writes_the_run_directory(tiny_mnist, tmp_path, config):
    data_root, _ = tiny_mnist
    out = tmp_path / "run"
    assert run_mlp("--yaml", str(REPO / f"yaml/mlp/{config}.yaml"), "--data_root", str(data_root),
                   "--epochs", "3", "--batchsize", "64", "--out_dir", str(out)) == 0

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["training"]["epochs"] == 3 and saved["dataset"]["batchsize"] == 64
    assert saved["run"]["script"] == "main_class_mlp.py"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_acc", "lr_F", "lr_B", "seconds"):
        assert all(key in row for row in rows), key

    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished"
    assert 0.0 <= results["test_acc"] <= 1.0
    assert results["test_acc"] > 0.5, "the tiny digits are learnable: training must help"
    assert results["best_epoch"] in (1, 2, 3) and results["seed"] == 2023
    for key in ("test_loss", "epochs", "wall_seconds", "device", "versions", "git_commit"):
        assert key in results
    assert (out / "best.pt").is_file() and (out / "checkpoint.pt").is_file()


def test_same_seed_same_results(tiny_mnist, tmp_path):
    data_root, _ = tiny_mnist
    metrics = []
    for name in ("a", "b"):
        assert run_mlp("--yaml", YAML, "--data_root", str(data_root), "--epochs", "2",
                       "--batchsize", "32", "--out_dir", str(tmp_path / name)) == 0
        results = json.loads((tmp_path / name / "results.json").read_text())
        history = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        metrics.append(({k: v for k, v in results.items() if k.startswith(("test_", "val_", "best"))},
                        [(r["train_loss"], r["val_loss"], r["val_acc"]) for r in history]))
    assert metrics[0] == metrics[1]


def test_another_seed_gives_other_results(tiny_mnist, tmp_path):
    data_root, _ = tiny_mnist
    losses = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        assert run_mlp("--yaml", YAML, "--data_root", str(data_root), "--epochs", "1",
                       "--batchsize", "32", "--seed", seed, "--out_dir", str(out)) == 0
        losses.append(json.loads((out / "metrics.jsonl").read_text())["train_loss"])
    assert losses[0] != losses[1]


def test_default_run_directory_names_config_overrides_and_seed(tiny_mnist, in_tmp_cwd):
    data_root, _ = tiny_mnist
    assert run_mlp("--yaml", YAML, "--data_root", str(data_root), "--epochs", "1", "--lr_B", "0.5") == 0
    assert (in_tmp_cwd / "runs/mlp/mnist_ccl-epochs=1-lr_B=0.5/seed2023/results.json").is_file()


@pytest.mark.slow
def test_command_line_subprocess(tiny_mnist, tmp_path):
    """As a user runs it: a separate process, exit code 0, results on disk."""
    data_root, checksum_file = tiny_mnist
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(REPO / "tests/launch.py"), str(checksum_file),
                           "main_class_mlp.py", "--yaml", YAML, "--data_root", str(data_root),
                           "--epochs", "1", "--out_dir", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "test_acc" in done.stdout
    assert json.loads((out / "results.json").read_text())["status"] == "finished"


def test_deterministic_kernels_leave_a_cpu_run_as_it_was(tiny_mnist, tmp_path):
    """On the CPU every kernel is deterministic already: `deterministic: 1` changes nothing,
    and it does not outlive its run."""
    from runs import outcome
    data_root, _ = tiny_mnist
    common = ["--yaml", YAML, "--data_root", str(data_root), "--epochs", "1", "--device", "cpu"]
    assert run_mlp(*common, "--out_dir", str(tmp_path / "a")) == 0
    assert run_mlp(*common, "--out_dir", str(tmp_path / "b"), "--deterministic", "1") == 0
    assert outcome(tmp_path / "a")[0] == outcome(tmp_path / "b")[0]
    assert not torch.are_deterministic_algorithms_enabled()


def test_an_operator_without_a_deterministic_kernel_is_a_clear_error(tiny_mnist, tmp_path, monkeypatch,
                                                                    capsys):
    from ccl import rules

    def nondeterministic(original, *args):  # what torch raises for such an operator under the setting
        assert torch.are_deterministic_algorithms_enabled()
        raise RuntimeError("upsample_bilinear2d_backward_out_cuda does not have a deterministic "
                           "implementation, but you set 'torch.use_deterministic_algorithms(True)'.")
    monkeypatch.setitem(rules.RULES, "CCL", with_loss("CCL", nondeterministic))
    assert run_mlp("--yaml", YAML, "--data_root", str(tiny_mnist[0]), "--epochs", "1",
                   "--out_dir", str(tmp_path / "run"), "--deterministic", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("main_class_mlp.py: error: deterministic 1: upsample_bilinear2d_backward_out_cuda "
                          "does not have a deterministic implementation")
    assert "Set deterministic: 0" in err and not torch.are_deterministic_algorithms_enabled()


def test_a_run_tests_the_model_of_every_selection(tiny_mnist, tmp_path):
    """The lowest validation loss (the released rule, the run's test_* results), the highest
    validation accuracy, and the last epoch: each model kept and tested."""
    out = tmp_path / "run"
    assert run_mlp("--yaml", str(REPO / "yaml/mlp/mnist_bp.yaml"), "--data_root", str(tiny_mnist[0]),
                   "--epochs", "6", "--batchsize", "32", "--lr_F", "0.3", "--out_dir", str(out)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    selections = results["selections"]
    assert list(selections) == ["val_loss", "val_acc", "last"]
    assert selections["val_loss"]["epoch"] == min(rows, key=lambda r: r["val_loss"])["epoch"] == results["best_epoch"]
    assert selections["val_acc"]["epoch"] == max(rows, key=lambda r: r["val_acc"])["epoch"]
    assert selections["last"]["epoch"] == 6
    assert (results["test_loss"], results["test_acc"]) == (selections["val_loss"]["test_loss"],
                                                           selections["val_loss"]["test_acc"])
    assert (out / "best_val_acc.pt").is_file()
    weights = torch.load(out / "best.pt", weights_only=True)
    other = torch.load(out / "best_val_acc.pt", weights_only=True)
    same_epoch = selections["val_loss"]["epoch"] == selections["val_acc"]["epoch"]
    assert all(torch.equal(weights[k], other[k]) for k in weights) == same_epoch


@pytest.mark.parametrize("epochs, lr_F, best, tested", [(1, "0.1", 1, 1), (3, "0", 1, 2)])
def test_each_selected_epoch_is_tested_once(tiny_mnist, tmp_path, monkeypatch, capsys, epochs, lr_F,
                                            best, tested):
    """One epoch: the three selections are one model. lr_F 0: the validation loss never
    improves after epoch 1, so val_loss and val_acc choose epoch 1 and the last is another."""
    from ccl.trainer import Trainer
    test_metrics, calls = Trainer._test_metrics, []
    monkeypatch.setattr(Trainer, "_test_metrics", lambda self: calls.append(1) or test_metrics(self))
    out = tmp_path / "run"
    assert run_mlp("--yaml", str(REPO / "yaml/mlp/mnist_bp.yaml"), "--data_root", str(tiny_mnist[0]),
                   "--epochs", str(epochs), "--lr_F", lr_F, "--out_dir", str(out)) == 0
    assert len(calls) == tested
    chosen = {"val_loss": best, "val_acc": best, "last": epochs}
    listed = ", ".join(map(str, sorted({best, epochs})))
    assert (f"testing the models of epochs {listed} (val_loss {best}, val_acc {best}, last {epochs})"
            in capsys.readouterr().out)
    selections = json.loads((out / "results.json").read_text())["selections"]
    assert {name: selection["epoch"] for name, selection in selections.items()} == chosen
    assert selections["val_loss"] == selections["val_acc"]
    if epochs == best:
        assert selections["last"] == selections["val_loss"]


def test_without_a_terminal_an_epoch_reports_its_progress_in_plain_lines(tiny_mnist, tmp_path,
                                                                        monkeypatch, capsys):
    """Under pytest stderr is no terminal, so tqdm draws nothing; every 0 s: a line per batch."""
    import ccl.trainer
    monkeypatch.setattr(ccl.trainer, "PROGRESS_EVERY_SECONDS", 0)
    assert run_mlp("--yaml", YAML, "--data_root", str(tiny_mnist[0]), "--epochs", "1",
                   "--batchsize", "100", "--out_dir", str(tmp_path / "run")) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1: batch")]
    assert [line.split(",")[0] for line in lines] == [f"epoch 1/1: batch {b}/6" for b in range(1, 7)]
    assert lines[0].endswith("s")  # no loss read yet: the monitor reads every 50 steps
