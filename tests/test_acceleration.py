"""The opt-in speed-ups: `precision: bf16` trains (and changes the numbers a little), a device
that cannot run a speed-up is refused before the run starts, and (CCL_TEST_COMPILE=1: compiling
takes about a minute on a CPU) `compile: 1` reproduces the released code's golden steps, with
and without `fused_pair_loss: 1` (tests/test_fused_pair_loss.py tests it eagerly). On a GPU,
every speed-up trains end to end (compiling ones with CCL_TEST_COMPILE=1)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch._inductor.cpp_builder
import torch.utils._triton
from conftest import REPO
from golden import assert_matches_summary, golden_model_and_objective, load_fixture
from runs import MLP_YAML, run_mlp

from ccl.acceleration import check_supported, training_loss
from ccl.config import build_config, read_yaml_sections
from ccl.optim import DualOptimizer
from ccl.rules import ccl_loss
from ccl.scripts import CNN, MLP
from utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
COMPILE_TESTS = pytest.mark.skipif(not os.environ.get("CCL_TEST_COMPILE"),
                                   reason="compiling takes about a minute on a CPU: set CCL_TEST_COMPILE=1")
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def config(**changes):
    return build_config(read_yaml_sections(MLP_YAML), changes, {}, MLP_YAML)


def train_mlp(data_root, out, device, *flags) -> dict:
    """Two epochs of the MNIST MLP config on the tiny data (the second replays what the first
    compiled or recorded); returns results.json."""
    assert run_mlp("--yaml", MLP_YAML, "--data_root", str(data_root), "--epochs", "2",
                   "--batchsize", "64", "--device", device, "--out_dir", str(out), *flags) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished"
    return results


def test_bf16_trains_close_to_float32(tiny_mnist, tmp_path):
    float32 = train_mlp(tiny_mnist[0], tmp_path / "float32", "cpu")["test_loss"]
    bf16 = train_mlp(tiny_mnist[0], tmp_path / "bf16", "cpu", "--precision", "bf16")["test_loss"]
    assert bf16 != float32 and bf16 == pytest.approx(float32, rel=0.01)


@NEEDS_CUDA
@pytest.mark.parametrize("flags", [("--precision", "bf16"),
                                   pytest.param(("--compile", "1"), marks=COMPILE_TESTS),
                                   pytest.param(("--compile", "1", "--precision", "bf16"),
                                                marks=COMPILE_TESTS)])
def test_speed_ups_train_on_cuda(tiny_mnist, tmp_path, flags):
    default = train_mlp(tiny_mnist[0], tmp_path / "default", "cuda")["test_loss"]
    assert train_mlp(tiny_mnist[0], tmp_path / "fast", "cuda", *flags)["test_loss"] == \
        pytest.approx(default, rel=0.01)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(ConfigError, match="Tesla V100 has no bfloat16 support.*set precision: float32"):
        check_supported(config(precision="bf16"), "cuda")
    check_supported(config(precision="bf16"), "cpu")  # the CPU runs it (slowly without native bf16)


def test_compile_without_a_code_generator_is_refused(monkeypatch):
    def no_compiler():
        raise RuntimeError("no g++")

    monkeypatch.setattr(torch._inductor.cpp_builder, "get_cpp_compiler", no_compiler)
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    with pytest.raises(ConfigError, match="no C\\+\\+ compiler was found.*set compile: 0"):
        check_supported(config(compile=1), "cpu")
    with pytest.raises(ConfigError, match="Triton is not installed"):
        check_supported(config(compile=1), "cuda")
    check_supported(config(), "cpu")  # off: nothing to check


@COMPILE_TESTS
@pytest.mark.parametrize("fixture, script, fused", [("mlp_mnist_ccl.pt", MLP, 0),
                                                    ("cnn_cifar10_ccl.pt", CNN, 0),
                                                    ("cnn_cifar10_ccl.pt", CNN, 1)])
def test_compiled_steps_match_the_released_code(fixture, script, fused):
    golden = load_fixture(fixture)

    def make_task(config, num_classes):
        return script.make_objective(config.replace(fused_pair_loss=fused), num_classes)

    config, model, task = golden_model_and_objective(golden, make_task)
    loss_of = training_loss(config.replace(compile=1), model, task, ccl_loss)
    optimizer = DualOptimizer(model, config)
    for index, expected in enumerate(golden["steps"]):
        loss = loss_of(golden["x"], golden["y"])
        assert loss.item() == pytest.approx(expected["total_loss"], rel=1e-4)
        optimizer.warmup_scaled(loss).backward()
        optimizer.step()
        for name, param in model.named_parameters():
            assert_matches_summary(param, expected["params_after"][name], f"step {index} {name}")


@pytest.mark.slow
def test_compile_on_the_cpu_prints_no_cuda_noise():
    """torch's C++ builder warns 'No CUDA runtime is found' on import wherever a CUDA toolkit is
    installed without a GPU; compiling for the CPU has no use for CUDA, so it is not shown."""
    code = ("import torch; from ccl.acceleration import check_supported; from ccl.bench.cases import "
            "load_config; check_supported(load_config('yaml/mlp/mnist_ccl.yaml', {'compile': 1})[0], 'cpu');"
            "torch.compile(lambda x: x * 2)(torch.ones(2))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "CUDA_HOME": sys.prefix})  # a toolkit 'found' everywhere
    assert done.returncode == 0, done.stderr
    assert "No CUDA runtime" not in done.stderr
