"""Interrupted runs continue exactly. A run killed after a checkpoint, or stopped by a signal
in the middle of an epoch, then resumed with --resume, ends with the same metrics.jsonl and
results.json as the same run left alone (CPU, same seed). Run directories are never silently
overwritten or reused.

The in-process runs use main_class_mlp.py without its no-schedule check, with momentum, a
warm-up that crosses an epoch boundary and a cosine schedule, so that every piece of state a
resume restores (momentum buffers, scheduler, step counter) changes the numbers."""
import dataclasses
import itertools
import json
import os
import signal

import pytest
import torch
from runs import MLP_YAML, outcome, run_mlp, start_mlp, wait_for_file, with_loss
from tiny_data import write_checksum_file, write_idx_dataset

import utils.data.mnist as mnist
import yaml
from ccl.experiment import main
from ccl.rules import RULES
from ccl.scripts import MLP
from utils.data import BatchLoader

EPOCHS = 6
BATCHES = 17  # per epoch: 540 training samples (90% of 600) in batches of 32

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULED = ("--mmt_F", "0.5", "--mmt_B", "0.5", "--warmup", "20", "--tmax", "4", "--eta_min", "0.1")
SCHEDULED_MLP = dataclasses.replace(MLP, check=lambda config: None)


def run_scheduled(*args: str) -> int:
    return main(SCHEDULED_MLP, [*args, *SCHEDULED] if "--resume" not in args else list(args))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Small MNIST files shared by the module: (data root, checksum file for subprocesses)."""
    root = tmp_path_factory.mktemp("data")
    checksums = write_idx_dataset(root, "MNIST")
    checksum_file = root / "checksums.json"
    write_checksum_file(checksum_file, {"utils.data.mnist": {"MNIST": checksums}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(mnist.CHECKSUMS, "MNIST", checksums)
        yield root, checksum_file


def run_args(data_root, out, *extra) -> list[str]:
    return ["--yaml", MLP_YAML, "--data_root", str(data_root), "--epochs", str(EPOCHS),
            "--batchsize", "32", "--device", "cpu", "--out_dir", str(out), *extra]


def uninterrupted(run, data_root, out):
    assert run(*run_args(data_root, out)) == 0
    rows, results = outcome(out)
    assert len(rows) == EPOCHS and results["status"] == "finished"
    return rows, results


@pytest.fixture(scope="module")
def reference(tiny, one_thread, tmp_path_factory):
    """The uninterrupted scheduled run the in-process resumed runs must match."""
    rows, results = uninterrupted(run_scheduled, tiny[0], tmp_path_factory.mktemp("ref") / "run")
    assert len({row["lr_F"] for row in rows}) == EPOCHS, "the cosine schedule must be active"
    return rows, results


@pytest.fixture(scope="module")
def released_reference(tiny, one_thread, tmp_path_factory):
    """The uninterrupted run of main_class_mlp.py itself, for the subprocess tests."""
    return uninterrupted(run_mlp, tiny[0], tmp_path_factory.mktemp("released") / "run")


def signals_at_steps(monkeypatch, plan: dict[int, list[int]]) -> None:
    """Deliver real signals to this process while the training step `step` (1-based, over
    the whole run) computes its loss: {step: [signal, ...]}."""
    steps = itertools.count(1)

    def rule(original, *args):
        for number in plan.get(next(steps), []):
            os.kill(os.getpid(), number)
        return original(*args)

    monkeypatch.setitem(RULES, "CCL", with_loss("CCL", rule))


def checkpoint_progress(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["progress"]


@pytest.mark.parametrize("step, number, position", [
    (5, signal.SIGTERM, "in epoch 1 of 6, after batch 5 of 17"),  # before any epoch ended
    (BATCHES + 9, signal.SIGTERM, "in epoch 2 of 6, after batch 9 of 17"),
    (2 * BATCHES + 1, signal.SIGINT, "in epoch 3 of 6, after batch 1 of 17"),
    (BATCHES, signal.SIGTERM, "after epoch 1 of 6"),  # the last batch: the epoch is finished first
])
def test_signal_mid_epoch_then_resume_matches_the_uninterrupted_run(
        tiny, reference, tmp_path, monkeypatch, capsys, step, number, position):
    out = tmp_path / "run"
    signals_at_steps(monkeypatch, {step: [number]})
    assert run_scheduled(*run_args(tiny[0], out)) == 128 + number
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(number).name} {position}" in err
    assert f"--resume {out}" in err
    assert not (out / "results.json").exists()
    progress = checkpoint_progress(out)
    assert progress["epoch"] * BATCHES + progress["batch"] == step
    saved = torch.load(out / "checkpoint.pt", weights_only=True)  # the time so far, validation included
    assert saved["wall_seconds"] > sum(row["seconds"] for row in saved["history"])

    monkeypatch.undo()
    assert run_scheduled("--resume", str(out)) == 0
    assert f"resuming {out} {position}" in capsys.readouterr().out
    assert outcome(out) == reference
    results = json.loads((out / "results.json").read_text())  # both parts of the run counted
    assert results["wall_seconds"] > results["train_seconds"] >= sum(row["seconds"] for row in saved["history"])


def test_a_stop_during_the_last_batch_lets_the_run_finish(tiny, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    signals_at_steps(monkeypatch, {EPOCHS * BATCHES: [signal.SIGTERM]})
    assert run_scheduled(*run_args(tiny[0], out)) == 0
    assert outcome(out) == reference


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_resumes(
        tiny, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    signals_at_steps(monkeypatch, {BATCHES + 3: [signal.SIGINT, signal.SIGINT]})
    assert run_scheduled(*run_args(tiny[0], out)) == 130
    assert f"stopped at once; resume from the last checkpoint with:\n  python main_class_mlp.py " \
           f"--resume {out}" in capsys.readouterr().err
    assert checkpoint_progress(out)["epoch"] == 1 and checkpoint_progress(out)["batch"] == 0

    monkeypatch.undo()
    assert run_scheduled("--resume", str(out)) == 0
    assert outcome(out) == reference


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGKILL, signal.SIGTERM])
def test_a_real_process_signalled_after_its_first_checkpoint_resumes_exactly(
        tiny, released_reference, tmp_path, number):
    """SIGKILL: no warning, the run continues from its last checkpoint. SIGTERM: the run stops
    at the next step boundary, saves a checkpoint and says how to resume."""
    data_root, checksum_file = tiny
    out = tmp_path / "run"
    process = start_mlp(checksum_file, *run_args(data_root, out))
    wait_for_file(out / "checkpoint.pt", process)
    process.send_signal(number)
    _, err = process.communicate(timeout=60)
    if number == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 128 + signal.SIGTERM, err
        assert "stopped by SIGTERM" in err and f"--resume {out}" in err and "Traceback" not in err
    assert not (out / "results.json").exists(), "the signal must land before the run ends"

    assert run_mlp("--resume", str(out)) == 0
    assert outcome(out) == released_reference


def test_resume_repairs_files_a_kill_left_behind(tiny, reference, tmp_path, monkeypatch):
    """checkpoint.pt is written first; metrics.jsonl and best.pt are rebuilt from it, so a
    kill between those writes loses nothing."""
    out = tmp_path / "run"
    signals_at_steps(monkeypatch, {2 * BATCHES: [signal.SIGTERM]})  # stop after epoch 2 (the best)
    assert run_scheduled(*run_args(tiny[0], out)) == 128 + signal.SIGTERM
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["best"]["val_loss"]["epoch"] == 2
    (out / "best.pt").unlink()
    (out / "metrics.jsonl").write_text("")

    monkeypatch.undo()
    signals_at_steps(monkeypatch, {1: [signal.SIGTERM]})  # the resumed run stops at once
    assert run_scheduled("--resume", str(out)) == 128 + signal.SIGTERM
    best = torch.load(out / "best.pt", weights_only=True)
    assert all(torch.equal(best[name], state["model"][name]) for name in state["model"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    monkeypatch.undo()
    assert run_scheduled("--resume", str(out)) == 0
    assert outcome(out) == reference


def test_resume_before_the_first_checkpoint_starts_over(tiny, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    signals_at_steps(monkeypatch, {5: [signal.SIGTERM]})
    assert run_scheduled(*run_args(tiny[0], out)) == 128 + signal.SIGTERM
    (out / "checkpoint.pt").unlink()  # as a run killed during its first epoch leaves it
    monkeypatch.undo()
    assert run_scheduled("--resume", str(out)) == 0
    assert "starts from the beginning" in capsys.readouterr().out
    assert outcome(out) == reference


def test_an_existing_run_directory_is_refused_then_overwritten(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args(tiny[0], out, "--epochs", "1")
    assert run_mlp(*args) == 0
    first = (out / "results.json").read_text()
    capsys.readouterr()

    assert run_mlp(*args) == 0  # the same command again: the result, nothing trained
    printed = capsys.readouterr()
    assert printed.out.startswith("test_loss ") and f"-> {out}" in printed.out
    assert "already finished; pass --overwrite to train it again" in printed.out
    assert (out / "results.json").read_text() == first

    assert run_mlp(*args, "--overwrite") == 0
    assert (out / "results.json").read_text() != first  # trained again (its times differ)


def test_resuming_a_finished_run_only_tests_it_again(tiny, tmp_path):
    out = tmp_path / "run"
    assert run_mlp(*run_args(tiny[0], out, "--epochs", "2")) == 0
    finished = outcome(out)
    assert run_mlp("--resume", str(out)) == 0
    assert outcome(out) == finished


def test_overwrite_deletes_only_run_directories(tiny, tmp_path, capsys):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    assert run_mlp(*run_args(tiny[0], precious, "--overwrite")) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    assert (precious / "chapter1.tex").is_file()


def test_out_dir_that_is_a_file_is_an_error(tiny, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("")
    assert run_mlp(*run_args(tiny[0], target)) == 2
    assert "is a file" in capsys.readouterr().err


def stopped_run(tiny, tmp_path, monkeypatch):
    out = tmp_path / "run"
    signals_at_steps(monkeypatch, {BATCHES + 2: [signal.SIGTERM]})
    assert run_mlp(*run_args(tiny[0], out)) == 128 + signal.SIGTERM
    monkeypatch.undo()
    return out


def test_resume_refuses_a_hand_edited_config(tiny, tmp_path, monkeypatch, capsys):
    out = stopped_run(tiny, tmp_path, monkeypatch)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["training"]["lr_F"] = 0.5
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    assert run_mlp("--resume", str(out)) == 2
    err = capsys.readouterr().err
    assert "was changed after the run started (lr_F 1.0 -> 0.5)" in err


def test_resume_refuses_an_unknown_key_in_the_saved_config(tiny, tmp_path, monkeypatch, capsys):
    out = stopped_run(tiny, tmp_path, monkeypatch)
    text = (out / "config.yaml").read_text().replace("  lr_F: 1.0", "  lr_F: 1.0\n  lr_FF: 2.0")
    (out / "config.yaml").write_text(text)
    capsys.readouterr()
    assert run_mlp("--resume", str(out)) == 2
    assert "unknown key 'lr_FF' in section training (did you mean lr_F?)" in capsys.readouterr().err


def test_resume_takes_no_config_flags(tiny, tmp_path, monkeypatch, capsys):
    out = stopped_run(tiny, tmp_path, monkeypatch)
    capsys.readouterr()
    assert run_mlp("--resume", str(out), "--lr_F", "0.5") == 2
    assert "drop --lr_F" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_a_clear_error(tiny, tmp_path, monkeypatch, capsys):
    out = stopped_run(tiny, tmp_path, monkeypatch)
    checkpoint = out / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    capsys.readouterr()
    assert run_mlp("--resume", str(out)) == 1
    err = capsys.readouterr().err
    assert "checkpoint.pt is damaged" in err and "--overwrite" in err


def test_resume_with_another_cpu_thread_count_says_the_numbers_may_differ(tiny, tmp_path, monkeypatch,
                                                                         capsys):
    out = stopped_run(tiny, tmp_path, monkeypatch)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["cpu_threads"] == torch.get_num_threads() == 1
    torch.save({**state, "cpu_threads": 2}, out / "checkpoint.pt")
    capsys.readouterr()
    assert run_mlp("--resume", str(out)) == 0
    assert "the run used 2 CPU threads and now has 1" in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tiny, tmp_path, monkeypatch, capsys):
    out = stopped_run(tiny, tmp_path, monkeypatch)
    torch.save([1, 2, 3], out / "checkpoint.pt")
    capsys.readouterr()
    assert run_mlp("--resume", str(out)) == 1
    assert "checkpoint.pt is not a checkpoint of this project" in capsys.readouterr().err


def test_resume_of_a_directory_without_a_run(tmp_path, capsys):
    assert run_mlp("--resume", str(tmp_path)) == 2
    assert "has no config.yaml, so it is not a run directory" in capsys.readouterr().err


def test_checkpoint_holds_everything_a_resume_needs(tiny, tmp_path, monkeypatch):
    out = stopped_run(tiny, tmp_path, monkeypatch)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(state) >= {"model", "optimizer", "progress", "history", "best", "rng", "config"}
    assert set(state["optimizer"]) >= {"forward_sgd", "feedback_sgd", "schedulers", "steps_taken"}
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["progress"]["augment_state"] is not None and state["progress"]["batch"] == 2
    assert state["best"]["val_loss"]["epoch"] == 1 and len(state["history"]) == 1
    assert all(t.device.type == "cpu" for t in state["model"].values())


def test_stop_handlers_are_restored_after_training(tiny, tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert run_mlp(*run_args(tiny[0], tmp_path / "run", "--epochs", "1")) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_an_epoch_resumed_mid_way_draws_the_same_order_and_augmentation():
    """The loader's part of an exact resume: the order comes from (seed, epoch), the
    augmentation generator's state is saved at the stop and restored."""
    images = torch.arange(50, dtype=torch.uint8).reshape(50, 1, 1, 1)
    labels = torch.arange(50)

    def noisy(images, labels, generator):  # an augmentation that consumes the generator
        return images.float() + torch.rand(images.shape, generator=generator), labels

    loader = BatchLoader(images, labels, 8, noisy, shuffle=True, seed=3)
    whole = list(loader.epoch(2))
    partial = loader.epoch(2)
    first = [next(partial) for _ in range(3)]
    state = loader.generator.get_state()
    rest = list(loader.epoch(2, start=3, generator_state=state))
    for (x, y), (x2, y2) in zip(whole, first + rest, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(whole[0][1], next(loader.epoch(3))[1]), "each epoch has its own order"
