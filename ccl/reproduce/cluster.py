"""Sweeps on a Slurm cluster through submitit: `python -m ccl.reproduce run ... --executor slurm`.

Every run that has not ended, and has no job queued or running, is submitted as one job (all of
them in one job array). A job decides when it starts what its run needs, as the local runner
does (ccl/reproduce/job.py): skip it if it has ended, resume it from its checkpoint, or start it;
so a job that waited in the queue while its run was finished elsewhere, or that Slurm requeued,
never repeats or erases work. Each submitted job's id is kept beside the run's log
(`seed<S>.job.json`), and the next invocation asks submitit (sacct, for Slurm) whether it is still
pending or running: then the run is left to it. A job of G > 1 GPUs trains its run over G
processes (torchrun, docs/SCALING.md).

`--executor submitit_local` submits the same jobs through submitit's local executor (processes
on this machine that outlive the invocation): for testing and debugging the Slurm path.
"""
from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ccl.reproduce.runner import Run, Settings
from ccl.run_dir import UNREADABLE, RunDir
from utils.errors import ConfigError, UserError
from utils.provenance import REPO_ROOT

EXECUTORS = ("local", "slurm", "submitit_local")
SUBMITIT_FOLDER = ".submitit"  # in the runs root: submitit's pickles and its logs, %j per job
# sacct states of a job that has not ended yet (everything else has: COMPLETED, FAILED, ...)
ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                       "COMPLETING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED")
# sacct may not list a job for a few seconds after sbatch; a record this young and unknown is alive
UNKNOWN_GRACE_SECONDS = 600


@dataclass(frozen=True)
class Cluster:
    """Where the jobs go and what each gets."""

    executor: str = "slurm"
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int = 4
    minutes: int = 240
    array_parallelism: int = 64

    def check(self) -> None:
        if self.executor == "slurm" and not self.partition:
            raise ConfigError("--executor slurm needs --slurm_partition P, the partition to submit to "
                              "(sinfo lists them)")
        if self.executor == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("--executor slurm submits with sbatch, which is not on PATH here: run it on a "
                              "Slurm login node (or use --executor submitit_local to try the sweep here)")
        if min(self.cpus_per_job, self.minutes, self.array_parallelism) < 1 or self.gpus_per_job < 0:
            raise ConfigError("--slurm_cpus_per_job, --slurm_time and --slurm_array_parallelism must be "
                              "positive, --slurm_gpus_per_job at least 0")

    def settings(self, settings: Settings) -> Settings:
        """How a job runs its entry script: on its GPUs (over G processes when G > 1), or on the
        CPU, with the job's CPUs shared among its processes."""
        launcher = tuple(settings.launcher)
        if self.gpus_per_job > 1:
            launcher = (launcher[0], "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(self.gpus_per_job), *launcher[1:])
        return replace(settings, jobs=1, devices=(None if self.gpus_per_job else "cpu",),
                       threads=max(1, self.cpus_per_job // max(1, self.gpus_per_job)), launcher=launcher)

    def executor_for(self, runs_root: Path):
        import submitit  # noqa: PLC0415  (only sweeps on a cluster need it)

        folder = Path(runs_root).resolve() / SUBMITIT_FOLDER / "%j"
        if self.executor == "slurm":
            executor = submitit.SlurmExecutor(folder)
            executor.update_parameters(partition=self.partition, time=self.minutes, nodes=1,
                                       ntasks_per_node=1, cpus_per_task=self.cpus_per_job,
                                       gpus_per_node=self.gpus_per_job or None, job_name="ccl",
                                       array_parallelism=self.array_parallelism)
        else:
            executor = submitit.LocalExecutor(folder)
            executor.update_parameters(timeout_min=self.minutes, gpus_per_node=self.gpus_per_job)
        return executor


def record_path(run: Run) -> Path:
    """Beside the run's log, like it: --overwrite empties the run directory."""
    return run.log.with_name(f"{run.run_dir.name}.job.json")


def read_record(run: Run) -> dict | None:
    try:
        return json.loads(record_path(run).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def job_state(record: dict, run: Run) -> str:
    """What submitit says of a recorded job: a Slurm state from sacct, or the local executor's."""
    import submitit  # noqa: PLC0415

    if record["executor"] == "slurm":
        return submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"]).state
    state = submitit.LocalJob(folder=record["folder"], job_id=record["job_id"]).state
    # submitit knows a local job's process only in the process that started it; from another
    # invocation its answer for a job without a result yet is this. The run directory's lock
    # says whether the job's training process lives (it outlives a killed controller); before
    # it takes the lock, the job is starting while its controller lives.
    if state == "NO PROCESS AND NO RESULT":
        if RunDir(run.run_dir).holder() is not None:
            return "RUNNING"
        return "PENDING" if _local_controller_alive(int(record["job_id"])) else "ENDED WITHOUT RESULT"
    return state


def _local_controller_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and b"submitit" in command


def active_job(run: Run) -> tuple[dict, str] | None:
    """The run's recorded job and its state, if it is queued or running."""
    record = read_record(run)
    if record is None:
        return None
    state = job_state(record, run)
    word = state.split()[0] if state else "UNKNOWN"
    young = time.time() - record.get("submitted", 0) < UNKNOWN_GRACE_SECONDS
    if word in ACTIVE_SLURM_STATES or (word == "UNKNOWN" and young):
        return record, state
    return None


def job_command(run: Run, settings: Settings) -> list[str]:
    """The job's command: ccl/reproduce/job.py, which decides when the job starts."""
    spec = {"config": str(Path(run.config).resolve()), "seed": run.seed, "overrides": list(run.overrides),
            "run_dir": str(Path(run.run_dir).resolve()), "device": settings.devices[0],
            "threads": settings.threads, "launcher": list(settings.launcher),
            "data_root": None if settings.data_root is None else str(Path(settings.data_root).resolve())}
    return [sys.executable, "-m", "ccl.reproduce.job", json.dumps(spec)]


def submit_all(runs: Sequence[Run], settings: Settings, cluster: Cluster, runs_root: Path,
               say: Callable[[str], None] = print) -> int:
    """Submit every run that has not ended and has no live job; say what became of each."""
    import submitit  # noqa: PLC0415

    settings = cluster.settings(settings)
    todo = []
    for run in runs:
        state, active = run.state(), active_job(run)
        if state in ("finished", "diverged"):
            say(f"{state:9} {run.run_dir} (skipped)")
        elif state == UNREADABLE:
            say(f"{state:9} {run.run_dir}: its results.json cannot be read and it has no checkpoint; "
                f"left alone (move the file away to train it again)")
        elif active is not None:
            say(f"queued    {run.run_dir}: job {active[0]['job_id']} is {active[1]} (log {run.log})")
        else:
            todo.append(run)
    if not todo:
        say(f"{len(runs)} runs: nothing to submit")
        return 0
    executor = cluster.executor_for(runs_root)
    functions = [submitit.helpers.CommandFunction(job_command(run, settings), cwd=REPO_ROOT, verbose=False)
                 for run in todo]
    try:
        jobs = executor.submit_array(functions)
    except (OSError, RuntimeError, submitit.core.utils.FailedSubmissionError) as error:
        raise UserError(f"{cluster.executor}: the submission failed: {str(error).strip().splitlines()[-1]}") from None
    for run, job in zip(todo, jobs):
        record_path(run).parent.mkdir(parents=True, exist_ok=True)
        record_path(run).write_text(json.dumps({
            "executor": cluster.executor, "job_id": str(job.job_id), "folder": str(job.paths.folder),
            "submitted": time.time(), "command": shlex.join(job_command(run, settings))}))
        say(f"submitted {run.run_dir}: job {job.job_id} (log {run.log}; submitit's {job.paths.stdout})")
    say(f"{len(runs)} runs: {len(todo)} submitted to {cluster.executor}; run the same command again to "
        f"see which are still queued or running, and to submit what has stopped")
    return 0
