"""The opt-in speed-ups: `precision: bf16` trains (and changes the numbers a little), and a
device that cannot run a speed-up is refused before the run starts. (`compile: 1` takes tens of
seconds to compile on a CPU; its numbers are measured in docs/PERFORMANCE.md.)"""
import json

import pytest
import torch

import torch._inductor.cpp_builder
import torch.utils._triton
from ccl.acceleration import check_supported
from runs import MLP_YAML, one_thread, run_mlp  # noqa: F401
from utils.config import build_config, read_yaml_sections
from utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**changes):
    return build_config(read_yaml_sections(MLP_YAML), changes, {}, MLP_YAML)


def test_bf16_trains_close_to_float32(tiny_mnist, tmp_path):
    results = {}
    for precision in ("float32", "bf16"):
        out = tmp_path / precision
        assert run_mlp("--yaml", MLP_YAML, "--data_root", str(tiny_mnist[0]), "--epochs", "1",
                       "--batchsize", "64", "--device", "cpu", "--precision", precision,
                       "--out_dir", str(out)) == 0
        results[precision] = json.loads((out / "results.json").read_text())
    float32, bf16 = results["float32"]["test_loss"], results["bf16"]["test_loss"]
    assert bf16 != float32 and bf16 == pytest.approx(float32, rel=0.01)


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


def test_cuda_graphs_need_a_gpu():
    with pytest.raises(ConfigError, match="compile 2 replays CUDA graphs.*set compile: 1"):
        check_supported(config(compile=2), "cpu")
