"""Nothing a user keeps is lost, and one process writes a run directory at a time: what
--overwrite may clear, a full disk, temporary files, the run lock, and a command repeated on
its own run directory."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO
from runs import MLP_YAML, ONE_THREAD, outcome, run_mlp, start_mlp, wait_for_file
from tiny_data import write_checksum_file, write_idx_dataset

import utils.data.mnist as mnist
import utils.io
from ccl.run_dir import LOCK, OUTPUTS, RunDir

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    checksums = write_idx_dataset(root, "MNIST", n_train=200, n_test=50)
    checksum_file = root / "checksums.json"
    write_checksum_file(checksum_file, {"utils.data.mnist": {"MNIST": checksums}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(mnist.CHECKSUMS, "MNIST", checksums)
        yield root, checksum_file


def args(data_root, out, *extra):
    return ["--yaml", MLP_YAML, "--data_root", str(data_root), "--epochs", "2", "--batchsize", "32",
            "--device", "cpu", "--out_dir", str(out), *extra]


def finished_run(tiny, out):
    assert run_mlp(*args(tiny[0], out)) == 0
    return (out / "results.json").read_text()


# --- --overwrite clears only what this project wrote ------------------------------------------

def test_overwrite_refuses_a_directory_whose_config_yaml_is_not_a_run(tiny, tmp_path, capsys):
    """The review's case: `echo x > d/config.yaml; echo y > d/notes.txt`, then --overwrite."""
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "config.yaml").write_text("x\n")
    (folder / "notes.txt").write_text("y\n")
    assert run_mlp(*args(tiny[0], folder, "--overwrite")) == 2
    assert "is not a run directory of this project" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "y\n" and (folder / "config.yaml").read_text() == "x\n"


def test_overwrite_refuses_a_run_directory_holding_other_files(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    first = finished_run(tiny, out)
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert run_mlp(*args(tiny[0], out, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "holds files this project did not write (notes.txt)" in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "results.json").read_text() == first
    (out / "notes.txt").unlink()
    assert run_mlp(*args(tiny[0], out, "--overwrite")) == 0


def test_every_file_a_run_writes_is_one_the_project_may_clear(tiny, tmp_path):
    out = tmp_path / "run"
    finished_run(tiny, out)
    assert {entry.name for entry in out.iterdir()} <= set(OUTPUTS)


def test_a_symlinked_out_dir_gets_a_message(tiny, tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert run_mlp(*args(tiny[0], link, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and "Traceback" not in err


# --- a full disk -------------------------------------------------------------------------------

def full_disk_after(monkeypatch, writes: int):
    """torch.save fails as it does on a full disk (a RuntimeError from its writer, the OSError
    in its context) once `writes` checkpoints have been written."""
    save = torch.save
    count = {"n": 0}

    def failing_save(obj, stream, *rest, **kwargs):
        count["n"] += 1
        if count["n"] <= writes:
            return save(obj, stream, *rest, **kwargs)
        stream.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(utils.io.torch, "save", failing_save)


def test_out_of_space_is_one_message_and_the_last_checkpoint_resumes(tiny, tmp_path, monkeypatch,
                                                                    capsys):
    out = tmp_path / "run"
    reference = tmp_path / "reference"
    finished_run(tiny, reference)
    full_disk_after(monkeypatch, writes=3)  # epoch 1's checkpoint and its two best models
    capsys.readouterr()
    assert run_mlp(*args(tiny[0], out)) == 1
    err = capsys.readouterr().err
    assert f"no space left on device at {out / 'checkpoint.pt'}" in err and "Traceback" not in err
    assert f"--resume {out}" in err
    assert not list(out.glob(".*.tmp"))  # the failed write removed its temporary file
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["epoch"] == 1

    monkeypatch.undo()
    assert run_mlp("--resume", str(out)) == 0
    assert outcome(out) == outcome(reference)


def test_an_unreadable_checkpoint_is_not_answered_with_overwrite(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    finished_run(tiny, out)
    (out / "results.json").unlink()  # as if stopped after its last checkpoint

    def unreadable(*_, **__):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(torch, "load", unreadable)
    capsys.readouterr()
    assert run_mlp("--resume", str(out)) == 1
    err = capsys.readouterr().err
    assert "cannot be read: Input/output error (the file is left as it is)" in err
    assert "--overwrite" not in err


def test_the_directory_is_fsynced_after_each_rename(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")),
                                                 fsync(fd)))
    utils.io.write_text(tmp_path / "a.txt", "a")
    assert str(tmp_path) in synced


def test_stale_temporary_files_are_removed_when_a_run_takes_its_directory(tiny, tmp_path):
    out = tmp_path / "run"
    finished_run(tiny, out)
    stale = [out / ".checkpoint.pt.abc123.tmp", out / ".best.pt.x.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    assert run_mlp("--resume", str(out)) == 0
    assert not any(path.exists() for path in stale)


# --- one writer per run directory -----------------------------------------------------------

@pytest.mark.slow
def test_a_second_process_is_refused_naming_the_pid(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from ccl.run_dir import RunDir\n"
        "with RunDir(sys.argv[2]).locked():\n"
        "    print('locked', flush=True); time.sleep(60)"), str(REPO), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_mlp(*args(tiny[0], out, "--overwrite")) == 2
        err = capsys.readouterr().err
        assert f"run directory {out} is in use by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert run_mlp(*args(tiny[0], out)) == 0  # the holder is gone: its lock is taken over
    assert (out / LOCK).read_text().strip() == str(os.getpid())


@pytest.mark.slow
def test_overwrite_of_a_run_that_is_training_is_refused(tiny, tmp_path):
    out = tmp_path / "run"
    process = start_mlp(tiny[1], *args(tiny[0], out, "--epochs", "200"))
    try:
        wait_for_file(out / "checkpoint.pt", process)
        done = subprocess.run([sys.executable, str(REPO / "tests/launch.py"), str(tiny[1]),
                               "main_class_mlp.py", *args(tiny[0], out, "--overwrite")],
                              cwd=REPO, env=ONE_THREAD, capture_output=True, text=True)
        assert done.returncode == 2
        assert f"is in use by process {process.pid}" in done.stderr
        assert (out / "checkpoint.pt").is_file()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


# --- the same command twice ------------------------------------------------------------------

def test_repeating_a_finished_command_prints_its_result(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    first = finished_run(tiny, out)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert run_mlp(*args(tiny[0], out)) == 0
    again = capsys.readouterr().out
    assert printed in again and "already finished; pass --overwrite to train it again" in again
    assert (out / "results.json").read_text() == first


def test_repeating_an_interrupted_command_says_how_to_resume(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    finished_run(tiny, out)
    (out / "results.json").unlink()  # as if stopped after its last checkpoint
    capsys.readouterr()
    assert run_mlp(*args(tiny[0], out)) == 2
    assert f"continue it with `python main_class_mlp.py --resume {out}`" in capsys.readouterr().err


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing_behind(tiny, tmp_path, capsys):
    """A data error: the directories the run created are removed; a directory that was there
    keeps only what the run did not write. After fixing the data the same command runs."""
    out = tmp_path / "new/run"
    assert run_mlp(*args(tmp_path / "no-data", out)) == 1
    assert not (tmp_path / "new").exists()
    out.mkdir(parents=True)
    assert run_mlp(*args(tmp_path / "no-data", out)) == 1
    assert out.is_dir() and not any(out.iterdir())  # no config.yaml, no stale .lock
    assert run_mlp(*args(tiny[0], out)) == 0


def test_resuming_a_finished_run_prints_its_result_and_keeps_it(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    first = finished_run(tiny, out)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert run_mlp("--resume", str(out)) == 0
    again = capsys.readouterr().out
    assert printed in again and "already finished: nothing to resume" in again
    assert (out / "results.json").read_text() == first


def test_a_read_only_run_directory_is_named_so(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    opened = os.open

    def read_only(path, *rest):  # as on a read-only mount (root ignores file modes)
        if str(path).startswith(str(out)):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))
        return opened(path, *rest)
    monkeypatch.setattr(os, "open", read_only)
    assert run_mlp(*args(tiny[0], out)) == 2
    err = capsys.readouterr().err
    assert f"run directory {out} is read-only" in err and "choose another --out_dir" in err


def test_the_analysis_in_a_read_only_run_directory_names_out(tmp_path, monkeypatch, capsys):
    from ccl.analysis import cli as analysis_cli
    monkeypatch.setattr(analysis_cli, "analyse_best", lambda *_: {"epoch": 1, "samples": 1})

    def read_only(*_, **__):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(utils.io.tempfile, "mkstemp", read_only)
    assert analysis_cli.main([str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path} is read-only" in err and "pass --out FILE" in err and "Traceback" not in err


def test_another_config_in_a_used_directory_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    finished_run(tiny, out)
    capsys.readouterr()
    assert run_mlp(*args(tiny[0], out, "--lr_F", "0.5")) == 2
    assert "holds another run: pass --overwrite to replace it" in capsys.readouterr().err


def test_a_damaged_best_model_at_test_time_is_a_message(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    save_best = RunDir.save_best

    def damaged_best(self, weights, selection="val_loss"):
        save_best(self, weights, selection)
        (self.path / "best.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setattr(RunDir, "save_best", damaged_best)
    assert run_mlp(*args(tiny[0], out)) == 1
    err = capsys.readouterr().err
    assert "the best model" in err and "is damaged" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_ctrl_c_while_the_libraries_load_is_exit_130_without_a_traceback(tmp_path):
    process = subprocess.Popen([sys.executable, str(REPO / "main_class_mlp.py"), "--yaml", MLP_YAML],
                               cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # torch takes seconds to import
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    assert "interrupted" in err
