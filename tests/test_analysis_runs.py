"""The analysis of runs: `analysis_every` during training (analysis.jsonl, exact across a stop
and --resume, the training bit-identical either way), `python -m ccl.analysis RUN_DIR` on a
run's best model, and `lr_B: 0`, which leaves the feedback network as it was initialised."""
import json
import os
import signal

import pytest
import torch
from conftest import REPO
from runs import MLP_YAML, outcome, run_mlp

from ccl.analysis.cli import main as analysis_main
from ccl.config import build_config, read_yaml_sections
from ccl.experiment import main
from ccl.optim import DualOptimizer
from ccl.rules import ccl_loss
from ccl.scripts import CNN, MLP
from models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

ANALYSIS_KEYS = {"epoch", "step", "layers", "cka", "weight_cosine", "grad_angle_deg"}
# BatchNorm on both sides and momentum: state the analysis must leave exactly as it found it
STATEFUL = ("--fw_bn", "2", "--bw_bn", "1", "--mmt_F", "0.5", "--mmt_B", "0.5")


def args(data_root, out, *extra):
    return ["--yaml", MLP_YAML, "--data_root", str(data_root), "--epochs", "3", "--batchsize", "64",
            "--device", "cpu", "--out_dir", str(out), *STATEFUL, *extra]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "analysis.jsonl").read_text().splitlines()]


@pytest.fixture
def analysed(tiny_mnist, tmp_path):
    """An uninterrupted run analysed every 2 epochs."""
    out = tmp_path / "analysed"
    assert run_mlp(*args(tiny_mnist[0], out, "--analysis_every", "2")) == 0
    return out


def test_analysis_is_off_by_default_and_leaves_the_training_bit_identical(tiny_mnist, tmp_path, analysed):
    plain = tmp_path / "plain"
    assert run_mlp(*args(tiny_mnist[0], plain)) == 0
    assert not (plain / "analysis.jsonl").exists()
    assert outcome(analysed) == outcome(plain)
    best, best_analysed = (torch.load(run / "best.pt", weights_only=True) for run in (plain, analysed))
    assert all(torch.equal(best[name], best_analysed[name]) for name in best)


def test_the_cnn_trains_bit_identical_with_the_analysis_on(tiny_cnn_data, tmp_path):
    """The conv layers (BatchNorm on both sides, the CNN's batch-coupled pair losses) too."""
    def run(out, *extra):
        return main(CNN, ["--yaml", str(REPO / "yaml/cnn/mnist_ccl.yaml"), "--data_root",
                          str(tiny_cnn_data[0]), "--out_dir", str(out), "--epochs", "1", "--batchsize", "4",
                          "--train_batches_per_epoch", "2", "--fw_bn", "2", "--bw_bn", "2",
                          "--device", "cpu", *extra])
    assert run(tmp_path / "plain") == 0
    assert run(tmp_path / "analysed", "--analysis_every", "1", "--analysis_samples", "4") == 0
    assert outcome(tmp_path / "analysed") == outcome(tmp_path / "plain")
    assert [record["epoch"] for record in records(tmp_path / "analysed")] == [0, 1]


def test_records_before_training_every_k_epochs_and_after_the_last(analysed):
    found = records(analysed)
    assert [record["epoch"] for record in found] == [0, 2, 3]
    assert [record["step"] for record in found] == [0, 18, 27]  # 9 batches of 64 per epoch
    for record in found:
        assert set(record) == ANALYSIS_KEYS
        layers = len(record["layers"])
        assert layers == 6 and len(record["cka"]) == layers + 1 and len(record["weight_cosine"]) == layers
        assert record["grad_angle_deg"][-1] == pytest.approx(0, abs=1e-6)  # the top layer learns by CE
    assert found[0]["cka"] != found[1]["cka"]


@pytest.fixture
def stepped(tiny_mnist, tmp_path):
    """A run measured at chosen steps on test images, keeping the weights there: in epoch 1, at
    its end (step 9), in epoch 2 and at the last step (27), which ends an analysed epoch."""
    out = tmp_path / "stepped"
    assert run_mlp(*args(tiny_mnist[0], out, "--analysis_steps", "0,4,9,13,27", "--analysis_every", "3",
                         "--analysis_split", "test", "--analysis_samples", "50",
                         "--analysis_snapshots", "1")) == 0
    return out


def test_analysis_at_chosen_steps_leaves_the_training_bit_identical(tiny_mnist, tmp_path, stepped):
    plain = tmp_path / "plain"
    assert run_mlp(*args(tiny_mnist[0], plain)) == 0
    assert outcome(stepped) == outcome(plain)
    best, best_stepped = (torch.load(run / "best.pt", weights_only=True) for run in (plain, stepped))
    assert all(torch.equal(best[name], best_stepped[name]) for name in best)


def test_records_and_snapshots_at_chosen_steps(stepped):
    found = records(stepped)
    assert [(record["step"], record["epoch"]) for record in found] == \
        [(0, 0), (4, None), (9, None), (13, None), (27, 3)]  # step 27 ends epoch 3: one record
    assert all(set(record) == ANALYSIS_KEYS for record in found)
    assert len({json.dumps(record["cka"]) for record in found}) == 5
    snapshots = sorted(path.name for path in (stepped / "snapshots").iterdir())
    assert snapshots == ["step0.pt", "step13.pt", "step27.pt", "step4.pt", "step9.pt"]
    last = torch.load(stepped / "snapshots/step27.pt", weights_only=True)
    final = torch.load(stepped / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(last[name], final[name]) for name in final)
    first = torch.load(stepped / "snapshots/step0.pt", weights_only=True)
    assert not torch.equal(first["layer1.fwd.weight"], final["layer1.fwd.weight"])


def test_a_stop_and_resume_gives_the_same_step_records(tiny_mnist, tmp_path, stepped):
    out = tmp_path / "stopped"
    extra = ("--analysis_steps", "0,4,9,13,27", "--analysis_every", "3", "--analysis_split", "test",
             "--analysis_samples", "50", "--analysis_snapshots", "1")
    with pytest.MonkeyPatch.context() as patch:
        stop_after_step(patch, 11)
        assert run_mlp(*args(tiny_mnist[0], out, *extra)) == 128 + signal.SIGTERM
    assert run_mlp("--resume", str(out)) == 0
    assert (out / "analysis.jsonl").read_text() == (stepped / "analysis.jsonl").read_text()


@pytest.mark.parametrize("steps", ["4,2", "-1", "x", "3,3"])
def test_bad_analysis_steps_are_refused(tiny_mnist, tmp_path, capsys, steps):
    assert run_mlp(*args(tiny_mnist[0], tmp_path / "bad", "--analysis_steps", steps)) == 2
    assert "analysis_steps" in capsys.readouterr().err


def stop_after_step(monkeypatch, step):
    """A real SIGTERM to this process once the optimizer has taken `step` steps."""
    original = DualOptimizer.step

    def step_then_stop(self):
        original(self)
        if self.steps_taken == step:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(DualOptimizer, "step", step_then_stop)


@pytest.mark.parametrize("step", [3, 9, 12])  # in epoch 1; after epoch 1 (9 batches); in epoch 2
def test_a_stop_and_resume_gives_the_same_analysis_file(tiny_mnist, tmp_path, analysed, step):
    out = tmp_path / "stopped"
    with pytest.MonkeyPatch.context() as patch:
        stop_after_step(patch, step)
        assert run_mlp(*args(tiny_mnist[0], out, "--analysis_every", "2")) == 128 + signal.SIGTERM
    (out / "analysis.jsonl").write_text("")  # as if killed before the view was written
    assert run_mlp("--resume", str(out)) == 0
    assert (out / "analysis.jsonl").read_text() == (analysed / "analysis.jsonl").read_text()
    assert outcome(out) == outcome(analysed)


def test_analyse_the_best_model_of_a_run(tiny_mnist, analysed, tmp_path, capsys):
    assert analysis_main([str(analysed), "--device", "cpu", "--samples", "7"]) == 0
    record = json.loads((analysed / "analysis.json").read_text())
    results = json.loads((analysed / "results.json").read_text())
    assert set(record) == ANALYSIS_KEYS - {"step"} | {"split", "samples", "weight_change"}
    assert (record["epoch"], record["split"], record["samples"]) == (results["best_epoch"], "test", 7)
    assert f"-> {analysed / 'analysis.json'}" in capsys.readouterr().out

    out = tmp_path / "val.json"
    assert analysis_main([str(analysed), "--device", "cpu", "--split", "val", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["samples"] == 60  # all of the tiny validation split


def test_an_empty_probe_is_refused(analysed, capsys):
    assert analysis_main([str(analysed), "--device", "cpu", "--samples", "0"]) == 2
    assert capsys.readouterr().err.strip() == \
        "python -m ccl.analysis: error: --samples 0: the probe batch needs at least 1 image"


def test_a_run_without_a_best_model_cannot_be_analysed(tiny_mnist, tmp_path, capsys):
    out = tmp_path / "unfinished"
    with pytest.MonkeyPatch.context() as patch:
        stop_after_step(patch, 2)  # in epoch 1: a checkpoint, no best.pt
        assert run_mlp(*args(tiny_mnist[0], out)) == 128 + signal.SIGTERM
    capsys.readouterr()
    assert analysis_main([str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{out} has no best.pt" in err and len(err.strip().splitlines()) == 1
    assert analysis_main([str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert "has no config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("weights, problem", [
    (lambda state: {**state, "layer1.fwd.weight": torch.zeros(3, 5)},
     "layer1.fwd.weight has shape (3, 5), the model's (256, 784)"),  # another architecture's
    (lambda state: {"fwd.weight": torch.zeros(2)}, "no layer1.fwd.weight"),
    (lambda state: list(state.values()), "it holds a list, not a mapping of names to tensors"),
    (lambda state: {**state, "layer1.fwd.weight": "w"}, "'layer1.fwd.weight' is a str, not a tensor"),
])
def test_a_best_model_that_is_not_the_runs_weights_is_named(analysed, capsys, weights, problem):
    best = analysed / "best.pt"
    torch.save(weights(torch.load(best, weights_only=True)), best)
    assert analysis_main([str(analysed), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m ccl.analysis: error: {best} does not hold this run's weights: ")
    assert problem in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_overwrite_clears_the_analysis_files_figures_and_logger_folders(tiny_mnist, analysed):
    for name in ("analysis.json", "cka.png", "curves.png"):
        (analysed / name).write_text("x")
    (analysed / "tensorboard").mkdir()
    (analysed / "tensorboard/events.out.tfevents.1").write_text("x")
    assert run_mlp(*args(tiny_mnist[0], analysed, "--overwrite")) == 0
    assert sorted(p.name for p in analysed.iterdir()) == [
        ".lock", "best.pt", "best_val_acc.pt", "checkpoint.pt", "config.yaml", "metrics.jsonl", "results.json"]


def test_a_zero_feedback_learning_rate_freezes_the_feedback_network():
    """lr_B 0 with momentum, weight decay, gradient centralisation and clipping: SGD's update is
    lr times a finite step, so the feedback parameters keep their initial bits."""
    overrides = {"lr_B": 0.0, "mmt_B": 0.9, "wd_B": 0.1, "GradC": 1, "grad_clip_B": 0.5}
    config = build_config(read_yaml_sections(MLP_YAML), overrides, {"task": "classification"}, "test")
    torch.manual_seed(0)
    model = build_model(config, (784,), 10)
    objective = MLP.make_objective(config, 10)
    optimizer = DualOptimizer(model, config)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    for _ in range(4):
        inputs, labels = torch.randn(32, 784), torch.randint(0, 10, (32,))
        ccl_loss(model, objective, inputs, labels).backward()
        optimizer.step()
    now = model.state_dict()
    feedback = [name for name, _ in model.named_parameters() if ".bwd." in name]
    assert feedback and optimizer.feedback_sgd.state  # momentum buffers exist and are non-zero
    for name in feedback:
        assert torch.equal(now[name].view(torch.int32), initial[name].view(torch.int32)), name
    assert not torch.equal(now["layer1.fwd.weight"], initial["layer1.fwd.weight"])


def test_the_best_models_analysis_says_how_far_each_weight_moved(tiny_mnist, tmp_path):
    """analysis.json's weight_change: ||W - W_0|| / ||W_0|| against the initial weights the run
    drew from its seed; BP's feedback network never trains, so its changes are exactly 0."""
    from ccl.analysis.cli import main as analysis_main
    out = tmp_path / "bp"
    assert run_mlp("--yaml", str(REPO / "yaml/mlp/mnist_bp.yaml"), "--data_root", str(tiny_mnist[0]),
                   "--epochs", "1", "--out_dir", str(out)) == 0
    assert analysis_main([str(out), "--device", "cpu"]) == 0
    change = json.loads((out / "analysis.json").read_text())["weight_change"]
    assert change["bwd"] == [0.0] * 6 and all(value > 0 for value in change["fwd"])


def test_metrics_log_each_loss_term_whose_sum_is_the_training_loss(analysed, tiny_mnist, tmp_path):
    """CCL's metrics rows carry the epoch's mean cross-entropy and the mean of every pair loss;
    BP's, whose loss is one term, none."""
    rows = [json.loads(line) for line in (analysed / "metrics.jsonl").read_text().splitlines()]
    names = ["train_loss_output", *(f"train_loss_pair{index}" for index in range(6))]
    for row in rows:
        assert [name for name in row if name.startswith("train_loss_")] == names
        assert sum(row[name] for name in names) == pytest.approx(row["train_loss"], rel=1e-6)
        assert all(row[name] > 0 for name in names)
    bp = tmp_path / "bp"
    assert run_mlp("--yaml", str(REPO / "yaml/mlp/mnist_bp.yaml"), "--data_root", str(tiny_mnist[0]),
                   "--epochs", "1", "--out_dir", str(bp), "--device", "cpu") == 0
    row = json.loads((bp / "metrics.jsonl").read_text())
    assert not [name for name in row if name.startswith("train_loss_")]
