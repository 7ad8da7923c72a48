"""Sweeps as cluster jobs, through submitit's local executor (`--executor submitit_local`: the
real submitit code, with local processes for Slurm's nodes): every run not finished is submitted
once, a second invocation submits nothing while the jobs run or after they have finished, a job
killed midway is resumed by the next invocation, and nothing runs twice. The Slurm executor
differs in where the jobs run and in asking sacct for their state."""
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from ccl.reproduce.cli import main
from ccl.reproduce.cluster import active_job, read_record
from ccl.reproduce.runner import Run

YAML = str(REPO / "yaml/mlp/mnist_ccl.yaml")


@pytest.fixture
def sweep(tiny_mnist, tmp_path, capsys):
    """`python -m ccl.reproduce run` on the tiny MNIST with the local submitit executor;
    returns (exit code, stdout)."""
    data_root, checksum_file = tiny_mnist
    launcher = (sys.executable, str(REPO / "tests/launch.py"), str(checksum_file))

    def run(*args):
        code = main(["run", YAML, *args, "--runs_root", str(tmp_path / "runs"), "--data_root", str(data_root),
                     "--executor", "submitit_local", "--slurm_gpus_per_job", "0", "--slurm_cpus_per_job", "1"],
                    launcher=launcher)
        return code, capsys.readouterr().out
    return run


def wait_for(condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)


def submitted(out: str) -> int:
    return sum(line.startswith("submitted ") for line in out.splitlines())


def commands_in(log) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("$ ")]


@pytest.mark.slow
def test_a_sweep_is_submitted_once_and_a_killed_job_is_resumed(sweep, tmp_path):
    sweep_args = ("--seeds", "1", "2", "3", "4", "--epochs", "6")
    code, out = sweep(*sweep_args)
    assert code == 0 and submitted(out) == 4, out
    runs = [tmp_path / f"runs/mlp/mnist_ccl-epochs=6/seed{seed}" for seed in (1, 2, 3, 4)]
    for run in runs:
        record = read_record(run_of(run))
        assert record["executor"] == "submitit_local" and f"job {record['job_id']} " in out
    code, out = sweep(*sweep_args)  # while they run (or have ended)
    assert code == 0 and "nothing to submit" in out and submitted(out) == 0, out

    killed = runs[-1]  # its entry script, SIGKILL, after its first checkpoint
    wait_for(lambda: (killed / "checkpoint.pt").is_file(), "the first checkpoint")
    os.kill(int((killed / ".lock").read_text()), signal.SIGKILL)  # the pid of the run's one writer
    wait_for(lambda: all((run / "results.json").is_file() for run in runs[:-1])
             and active_job(run_of(killed)) is None, "the end of the jobs")
    assert not (killed / "results.json").exists()
    code, out = sweep(*sweep_args)
    assert code == 0 and submitted(out) == 1 and out.count("finished  ") == 3, out
    wait_for(lambda: (killed / "results.json").is_file(), "the resumed run")
    code, out = sweep(*sweep_args)
    assert code == 0 and out.count("finished  ") == 4 and "nothing to submit" in out, out

    for run in runs[:-1]:  # each trained once
        assert len(commands_in(run.with_name(f"{run.name}.log"))) == 1
    first, second = commands_in(killed.with_name(f"{killed.name}.log"))
    assert "--overwrite" not in first and "--yaml" in first and f"--resume {killed}" in second
    assert "resuming" in killed.with_name(f"{killed.name}.log").read_text()


def run_of(run_dir) -> Run:
    """The runner's Run of a run directory (its log and job record sit beside it)."""
    return Run(Path(YAML), 0, (), run_dir)


@pytest.mark.parametrize("argv, message", [
    (["--executor", "slurm"], "--executor slurm needs --slurm_partition P"),
    (["--slurm_gpus_per_job", "2"], "the --slurm_* options apply to --executor slurm"),
    (["--executor", "submitit_local", "--jobs", "2"], "--jobs, --devices and --threads apply to --executor local"),
    (["--executor", "submitit_local", "--slurm_time", "0"], "--slurm_time and --slurm_array_parallelism must be"),
])
def test_bad_executor_options_exit_2(capsys, argv, message):
    assert main(["run", YAML, "--seeds", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_a_slurm_dry_run_lists_the_jobs_it_would_submit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")  # as on a login node
    assert main(["run", YAML, "--seeds", "1", "2", "--epochs", "1", "--runs_root", str(tmp_path), "--dry_run",
                 "--executor", "slurm", "--slurm_partition", "gpu", "--slurm_gpus_per_job", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("new ") for line in lines)
    assert "-m torch.distributed.run --standalone --nproc_per_node 2" in lines[0]  # 2 GPUs: 2 processes
