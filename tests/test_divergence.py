"""A run whose loss or parameters become NaN or infinite stops with status "diverged", the step,
the best model so far kept, and exit code 3; the check reads the device only every few steps."""
import itertools
import json
import math
import os
import signal

import pytest
import torch
from runs import MLP_YAML, run_mlp, with_loss

from ccl.experiment import EXIT_DIVERGED
from ccl.rules import RULES
from ccl.trainer import DIVERGENCE_CHECK_EVERY, Diverged, DivergenceMonitor

pytestmark = pytest.mark.usefixtures("one_thread")
BATCHES = 17  # per epoch of the tiny data in batches of 32


def run_args(data_root, out, *extra):
    return ["--yaml", MLP_YAML, "--data_root", str(data_root), "--epochs", "4", "--batchsize", "32",
            "--device", "cpu", "--out_dir", str(out), *extra]


def tamper(monkeypatch, method: str, at_step: int, action) -> list[int]:
    """Wrap the rule so that `action(model, loss) -> loss` runs at global step `at_step`;
    returns a list that counts the steps the run took."""
    calls = []

    def rule(original, model, task, inputs, targets):
        calls.append(1)
        loss = original(model, task, inputs, targets)
        return action(model, loss) if len(calls) == at_step else loss

    monkeypatch.setitem(RULES, method, with_loss(method, rule))
    return calls


def results_of(out):
    return json.loads((out / "results.json").read_text())


def test_a_huge_learning_rate_ends_diverged_with_a_nonzero_exit(tiny_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_mlp(*run_args(tiny_mnist[0], out, "--lr_F", "1e30", "--lr_B", "1e30")) == EXIT_DIVERGED
    results = results_of(out)
    assert results["status"] == "diverged" and results["diverged"] == "training loss"
    assert results["diverged_at_step"] >= 1 and results["best_epoch"] is None
    err = capsys.readouterr().err
    assert "training diverged: the training loss became NaN or infinite at step" in err
    assert "--lr_F" in err and "Traceback" not in err


def test_nan_loss_is_caught_at_the_next_check_and_the_best_model_is_kept(tiny_mnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    bad_step = 2 * BATCHES + 4  # in epoch 3, before its end and before the check at step 50
    calls = tamper(monkeypatch, "CCL", bad_step, lambda model, loss: loss * math.nan)
    assert run_mlp(*run_args(tiny_mnist[0], out)) == EXIT_DIVERGED
    assert len(calls) == DIVERGENCE_CHECK_EVERY, "stopped at the first check after the bad step"

    results = results_of(out)
    assert (results["status"], results["diverged_at_step"], results["diverged_in_epoch"]) == \
        ("diverged", bad_step, 3)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (checkpoint["progress"]["epoch"], checkpoint["progress"]["batch"]) == (2, 0)
    assert results["best_epoch"] == checkpoint["best"]["val_loss"]["epoch"] in (1, 2)
    assert results["val_loss"] == checkpoint["best"]["val_loss"]["val_loss"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert all(t.isfinite().all() for t in best.values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_nan_parameter_with_a_finite_loss_is_caught_at_the_epoch_end(tiny_mnist, tmp_path, monkeypatch,
                                                                       capsys):
    """Under BP the feedback network never reaches the loss: a NaN there leaves it finite."""
    def poison_feedback(model, loss):
        with torch.no_grad():
            model.feedback_parameters()[0].fill_(math.nan)
        return loss

    out = tmp_path / "run"
    calls = tamper(monkeypatch, "BP", BATCHES + 3, poison_feedback)
    assert run_mlp(*run_args(tiny_mnist[0], out, "--method", "BP")) == EXIT_DIVERGED
    assert len(calls) == 2 * BATCHES, "the loss stayed finite; the epoch-end check caught it"
    results = results_of(out)
    assert (results["diverged"], results["diverged_at_step"], results["best_epoch"]) == \
        ("parameters", 2 * BATCHES, 1)
    assert "the parameters became NaN or infinite by step 34" in capsys.readouterr().err


def test_a_stop_never_checkpoints_a_diverged_model(tiny_mnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    steps = itertools.count(1)

    def rule(original, model, task, inputs, targets):
        step = next(steps)
        loss = original(model, task, inputs, targets)
        if step == BATCHES + 2:
            loss = loss * math.inf
        if step == BATCHES + 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setitem(RULES, "CCL", with_loss("CCL", rule))
    assert run_mlp(*run_args(tiny_mnist[0], out)) == EXIT_DIVERGED
    assert results_of(out)["diverged_at_step"] == BATCHES + 2
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert (checkpoint["progress"]["epoch"], checkpoint["progress"]["batch"]) == (1, 0)


def test_monitor_remembers_the_first_bad_step_on_the_device():
    monitor = DivergenceMonitor(step=10)
    for value in (1.0, 2.0):
        monitor.observe(torch.tensor(value))
    monitor.raise_if_diverged()  # all finite so far
    for value in (math.inf, 3.0, math.nan):
        monitor.observe(torch.tensor(value))
    with pytest.raises(Diverged) as caught:
        monitor.raise_if_diverged()
    assert caught.value.step == 13 and caught.value.what == "training loss"
