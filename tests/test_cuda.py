"""The CUDA paths. Skipped without a GPU (CI has none); on a GPU machine:

    python -m pytest tests/test_cuda.py

A CCL step on CUDA gives the CPU's numbers (with TF32 off, so that float32 means float32 on
both), every entry script trains on CUDA end to end, and a run stopped on CUDA resumes there."""
import json
import signal

import pytest
import torch
from conftest import REPO
from golden import golden_model_and_objective, load_fixture
from runs import MLP_YAML, outcome, run_mlp, with_loss

import ccl.experiment as experiment
from ccl.optim import DualOptimizer
from ccl.rules import ccl_loss
from ccl.scripts import AUTOENCODER, CNN, cnn_objective, mlp_objective

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

QUICK = ("--epochs", "2", "--batchsize", "4", "--train_batches_per_epoch", "2", "--device", "cuda")


@pytest.fixture
def float32_matmuls():
    """TF32 off for the test: cuDNN convolutions use it by default, which is a 1e-3 effect."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _parameters_after_golden_steps(golden, make_task, device):
    config, model, task = golden_model_and_objective(golden, make_task)
    model.to(device)
    optimizer = DualOptimizer(model, config)
    x, y = golden["x"].to(device), golden["y"].to(device)
    for step in range(len(golden["steps"])):
        optimizer.warmup_scaled(ccl_loss(model, task, x, y), batch_in_epoch=step).backward()
        optimizer.step()
    return {name: p.detach().cpu() for name, p in model.named_parameters()}


@pytest.mark.usefixtures("float32_matmuls")
@pytest.mark.parametrize("fixture, make_task", [("mlp_mnist_ccl.pt", mlp_objective),
                                                ("cnn_cifar10_ccl.pt", cnn_objective)])
def test_ccl_steps_on_cuda_match_the_cpu(fixture, make_task):
    golden = load_fixture(fixture)
    on_cpu = _parameters_after_golden_steps(golden, make_task, "cpu")
    on_cuda = _parameters_after_golden_steps(golden, make_task, "cuda")
    for name, expected in on_cpu.items():
        torch.testing.assert_close(on_cuda[name], expected, rtol=1e-4, atol=1e-6, msg=name)


def _finished_on_cuda(out):
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["device"].startswith("cuda")
    return results


@pytest.mark.parametrize("method", ["CCL", "BP"])
def test_mlp_trains_on_cuda(tiny_mnist, tmp_path, method):
    out = tmp_path / "run"
    assert run_mlp("--yaml", MLP_YAML, "--data_root", str(tiny_mnist[0]), "--out_dir", str(out),
                   "--method", method, *QUICK) == 0
    _finished_on_cuda(out)


@pytest.mark.parametrize("config", ["cifar10_ccl", "cifar10_bp_pool", "cifar100_ccl", "stl10_ccl",
                                    "mnist_ccl"])
def test_cnn_trains_on_cuda(tiny_cnn_data, tmp_path, config):
    out = tmp_path / "run"
    assert experiment.main(CNN, [
        "--yaml", str(REPO / f"yaml/cnn/{config}.yaml"), "--data_root", str(tiny_cnn_data[0]),
        "--out_dir", str(out), *QUICK]) == 0
    _finished_on_cuda(out)


@pytest.mark.parametrize("config", ["stl10_ccl_legacy", "stl10_bp_legacy"])
def test_autoencoder_trains_on_cuda(tiny_stl10, tmp_path, config):
    out = tmp_path / "run"
    assert experiment.main(AUTOENCODER, [
        "--yaml", str(REPO / f"yaml/cnn_ae/{config}.yaml"), "--data_root", str(tiny_stl10[0]),
        "--out_dir", str(out), *QUICK]) == 0
    assert "test_mse" in _finished_on_cuda(out)
    assert (out / "reconstructions.png").is_file()


def test_a_run_stopped_on_cuda_resumes_there(tiny_mnist, tmp_path, monkeypatch):
    from ccl.rules import RULES

    args = ("--yaml", MLP_YAML, "--data_root", str(tiny_mnist[0]), "--epochs", "3",
            "--batchsize", "32", "--device", "cuda")
    assert run_mlp(*args, "--out_dir", str(tmp_path / "reference")) == 0

    original, calls = RULES["CCL"], []

    def stopping_rule(loss, *rule_args):  # SIGTERM in the middle of epoch 2
        calls.append(None)
        if len(calls) == 25:
            signal.raise_signal(signal.SIGTERM)
        return loss(*rule_args)

    monkeypatch.setitem(RULES, "CCL", with_loss("CCL", stopping_rule))
    out = tmp_path / "run"
    assert run_mlp(*args, "--out_dir", str(out)) == 128 + signal.SIGTERM
    monkeypatch.setitem(RULES, "CCL", original)
    assert run_mlp("--resume", str(out)) == 0
    rows, results = outcome(out)
    reference_rows, reference_results = outcome(tmp_path / "reference")
    assert results["device"].startswith("cuda")
    for row, expected in zip(rows, reference_rows, strict=True):
        assert row == pytest.approx(expected, rel=1e-5)
    assert results["test_acc"] == pytest.approx(reference_results["test_acc"], abs=1e-3)


@pytest.mark.parametrize("config", ["cifar10_ccl", "cifar10_bp"])
def test_deterministic_cuda_runs_repeat_to_the_bit(tiny_cnn_data, tmp_path, config):
    """deterministic: 1 makes cuDNN and cuBLAS pick deterministic kernels: the same CNN run twice
    (pooled CCL, strided BP with BatchNorm) gives the same metrics to the last bit."""
    from runs import outcome
    outcomes = []
    for name in ("first", "second"):
        out = tmp_path / name
        assert experiment.main(CNN, [
            "--yaml", str(REPO / f"yaml/cnn/{config}.yaml"), "--data_root", str(tiny_cnn_data[0]),
            "--out_dir", str(out), "--deterministic", "1", *QUICK]) == 0
        outcomes.append(outcome(out))
    assert outcomes[0] == outcomes[1]
