"""`python -m ccl.bench --quick`: every section runs on tiny batches and writes its tables and
JSON. The numbers themselves are not checked: they depend on the machine."""
import json
import math

import pytest
import torch

from ccl.bench.cases import METHODS, official_split_sizes
from ccl.bench.cli import main
from ccl.bench.steps import PHASES


def bench(tmp_path, *args) -> tuple[int, dict | None]:
    out = tmp_path / "bench.json"
    code = main(["--quick", "--device", "cpu", "--json", str(out), *args])
    return code, json.loads(out.read_text()) if out.exists() else None


# The autoencoder is left out (with its 86 million parameters a step of 4 tiny images takes a
# second on a CPU core) and cnn_pool too (the epoch test below trains it): the code that times
# them is the same.
ARCHS = ("mlp_mnist", "mlp_cifar10", "cnn")


@pytest.mark.slow
def test_steps_and_the_pipeline_comparison(tiny_mnist, tmp_path, capsys):
    code, results = bench(tmp_path, "--data_root", str(tiny_mnist[0]), "--archs", *ARCHS, "--profile")
    assert code == 0
    assert [(r["arch"], r["method"]) for r in results["steps"]] == \
        [(arch, method) for arch in ARCHS for method in METHODS]
    for row in results["steps"]:
        assert row["step_ms"] > 0 and row["samples_per_s"] > 0 and row["batch_size"] == 4
        assert set(row["split_ms"]) == set(PHASES) and row["peak_mb"] is None  # no peak on CPU
        assert row["operators"] and all(op["name"].startswith("aten::") for op in row["operators"])
        assert row["operator_count"] > 10
    assert set(results["ccl_bp_ratio"]) == set(ARCHS)
    pipeline = results["pipeline"]
    assert pipeline["train_samples"] == 512 and pipeline["speedup"] > 0  # --quick: 512 of the 540
    assert len(pipeline["ours_seconds"]) == len(pipeline["torchvision_seconds"]) == 1
    assert results["provenance"]["device"] == "cpu"
    printed = capsys.readouterr().out
    for heading in ("CCL/BP", "BP peak MB", "forward_feedback ms", "calls/step", "torchvision DataLoader",
                    "speed-up"):
        assert heading in printed


def test_whole_epochs_of_a_config(tmp_path, capsys):
    code, results = bench(tmp_path, "--epoch", "yaml/cnn/cifar10_ccl.yaml")
    assert code == 0
    epoch = results["epoch"]
    assert (epoch["train_samples"], epoch["batch_size"], len(epoch["epoch_seconds"])) == (8, 4, 1)
    printed = capsys.readouterr().out
    assert "steps" not in results and "validation s" in printed
    # quick numbers are no measurement: said before the tables, after them and in the JSON
    lines = printed.strip().splitlines()
    assert lines[1].startswith("note: --quick is a smoke test") and "mean nothing" in lines[-3]
    assert "mean nothing" in results["note"]


@pytest.mark.parametrize("speed_up, arch, largest", [(("--precision", "bf16"), "mlp_mnist", 0.5),
                                                     (("--fused_pair_loss", "1"), "cnn_pool", 1e-3)])
def test_numerics_of_a_speed_up(tmp_path, capsys, speed_up, arch, largest):
    code, results = bench(tmp_path, "--numerics", *speed_up, "--archs", arch)
    assert code == 0
    [row] = results["numerics"]
    assert row["float32_again"] == {"first_step": 0, "parameters": 0, "loss": 0}  # CPU: reproducible
    assert all(0 < difference < largest for difference in row["speed_ups"].values())
    assert "float32 again" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--epoch", "elsewhere/config.yaml"], "the folder names the entry script"),
    (["--epoch", "yaml/mlp/no_such.yaml"], "does not exist"),
    (["--epoch", "yaml/cnn/cifar10_ccl.yaml", "--archs", "cnn"], "--archs do not apply"),
    (["--numerics", "--precision", "bf16", "--profile"], "--profile do not apply to --numerics"),
    (["--numerics"], "add one or more of --compile 1, --precision bf16, --fused_pair_loss 1"),
])
def test_bad_settings_are_refused(tmp_path, capsys, args, message):
    assert bench(tmp_path, *args) == (2, None)
    assert message in capsys.readouterr().err


def test_missing_mnist_stops_the_benchmark_before_the_steps(tmp_path, capsys):
    assert bench(tmp_path, "--data_root", str(tmp_path / "nowhere"), "--archs", "mlp_mnist") == (1, None)
    err = capsys.readouterr()
    assert "prepare_data.py MNIST" in err.err and "--no_pipeline" in err.err
    assert "Training step" not in err.out


def test_unknown_flags_and_architectures_are_refused(capsys):
    for args in (["--arch", "cnn"], ["--archs", "resnet"], ["--precision", "fp8"]):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_and_peak_memory(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--device", "cuda", "--archs", "mlp_mnist", "cnn_pool", "--no_pipeline",
                 "--profile", "--json", str(out)]) == 0
    for row in json.loads(out.read_text())["steps"]:
        assert row["step_ms"] > 0 and row["peak_mb"] > 0 and all(t >= 0 for t in row["split_ms"].values())
        assert sum(op["ms_per_step"] for op in row["operators"]) > 0


def test_target_propagation_against_bp(tmp_path, capsys):
    """--tp times the trainer's step of BP and every TP rule, each on its own config, and prices
    a 5-seed row from the step, the feedback call and the config's epochs."""
    code, results = bench(tmp_path, "--tp")
    assert code == 0
    rows = {row["method"]: row for row in results["tp_steps"]}
    assert list(rows) == ["BP", "DTP", "DRL", "L-DRL", "FWDTP-BN", "FW-DTP"]
    for method, row in rows.items():
        trains_feedback = method in ("DTP", "DRL", "L-DRL")
        assert row["step_ms"] > 0 and row["batch_size"] == 4 and row["epochs"] == 100
        assert (row["feedback_call_ms"] > 0) == trains_feedback == (row["pretrain_epochs"] == 5)
        expected = 5 * row["steps_per_epoch"] * (100 * row["step_ms"] + row["pretrain_epochs"]
                                                 * row["feedback_call_ms"]) / 1000 / 3600
        assert row["row_hours"] == pytest.approx(expected)
    assert rows["BP"]["steps_per_epoch"] == math.ceil(official_split_sizes("MNIST")[0] / 4)
    assert "/BP per sample" in capsys.readouterr().out


def test_target_propagation_is_timed_on_the_mlps_only(capsys):
    assert main(["--tp", "--archs", "cnn", "--device", "cpu"]) == 2
    assert "--tp times the MLPs only" in capsys.readouterr().err
