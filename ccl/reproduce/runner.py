"""Run every (config, seed) that is not finished yet, several at a time, each in its own process.

A run lives in <runs_root>/<config folder>/<config name>[-key=value...]/seed<seed> (the layout
the entry scripts use under runs/ by default), its output goes to seed<seed>.log beside it. What
the directory holds decides what happens to the run:

    results.json, status finished   skipped
    results.json, status diverged   skipped and reported: with the same seed it diverges again
    checkpoint.pt                   resumed (--resume)
    anything else                   started again (--overwrite: without a checkpoint nothing is lost)

SIGINT or SIGTERM to the runner is passed on to every running run, which checkpoints and stops;
no new run starts, and the next invocation resumes them. A second signal stops them at once.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccl.cli import default_out_dir
from ccl.config import read_yaml_sections
from ccl.reproduce.paper import released_procedure
from ccl.run_dir import Damaged, RunDir
from ccl.scripts import BY_CONFIG_FOLDER
from ccl.trainer import StopRequests
from utils.provenance import REPO_ROOT
from utils.errors import ConfigError, UserError

POLL_SECONDS = 0.2


def read_results(run_dir: Path) -> dict | None:
    """results.json of a run, None when it has none or a damaged one (not finished, then)."""
    try:
        return RunDir(run_dir).read_results()
    except Damaged:
        return None


@dataclass(frozen=True)
class Run:
    config: Path
    seed: int
    overrides: tuple[tuple[str, Any], ...]  # config keys set on the command line, in order
    run_dir: Path

    @property
    def script(self) -> Path:
        return REPO_ROOT / BY_CONFIG_FOLDER[self.config.parent.name].prog

    @property
    def log(self) -> Path:
        # beside the run directory, not in it: --overwrite empties the directory
        return self.run_dir.with_name(f"{self.run_dir.name}.log")

    def state(self) -> str:
        """finished or diverged (from results.json), interrupted (a checkpoint) or new."""
        return RunDir(self.run_dir).state()


@dataclass(frozen=True)
class Settings:
    """How runs are launched. `launcher` is the command that runs an entry script (tests put
    tests/launch.py in it to run on their small datasets)."""

    jobs: int = 1
    devices: Sequence[str | None] = (None,)  # None: the entry script's default device
    threads: int = 1
    data_root: Path | None = None
    launcher: Sequence[str] = (sys.executable,)

    def command(self, run: Run, device: str | None) -> list[str]:
        common = ([] if device is None else ["--device", device]) + \
                 ([] if self.data_root is None else ["--data_root", str(self.data_root)])
        if run.state() == "interrupted":
            return [*self.launcher, str(run.script), "--resume", str(run.run_dir), *common]
        keys = [word for name, value in run.overrides for word in (f"--{name}", str(value))]
        return [*self.launcher, str(run.script), "--yaml", str(run.config), "--seed", str(run.seed),
                "--out_dir", str(run.run_dir), "--overwrite", *keys, *common]

    def environment(self) -> dict[str, str]:
        threads = str(self.threads)  # parallel runs on one CPU must not fight over its cores
        return {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "PYTHONUNBUFFERED": "1"}  # the log shows each epoch as it ends


def plan_runs(configs: Sequence[Path], seeds: Sequence[int], overrides: Mapping[str, Any],
              runs_root: Path, procedure: str = "released") -> list[Run]:
    """Every (config, seed), each with its run directory. The overrides (e.g. fewer epochs) and
    those of the procedure (`released_procedure`) are in the directory's name, so a shortened
    run is never taken for a full one, nor a run of one procedure for the other's."""
    for config in configs:
        if not Path(config).is_file():
            raise ConfigError(f"config file {config} not found")
        folder = Path(config).parent.name
        if folder not in BY_CONFIG_FOLDER:
            raise ConfigError(f"{config}: configs live in yaml/{{{','.join(BY_CONFIG_FOLDER)}}}/, which "
                              f"names the entry script; {folder!r} is none of these")
    runs = []
    for config in map(Path, configs):
        keys = dict(overrides)
        if procedure == "released":
            keys = {**released_procedure({**read_yaml_sections(config), **overrides},
                                         config.parent.name), **overrides}
        runs += [Run(config, seed, tuple(keys.items()), default_out_dir(config, keys, seed, runs_root))
                 for seed in seeds]
    return list(dict.fromkeys(runs))  # a config or seed named twice runs once


@dataclass
class Outcome:
    run: Run
    status: str  # finished, diverged, failed, stopped or not started (the runner was stopped)
    skipped: bool = False
    exit_code: int | None = None
    seconds: float = 0.0


@contextmanager
def only_runner(runs_root: Path) -> Iterator[None]:
    """One runner per runs root: two would resume the same interrupted run at the same time."""
    Path(runs_root).mkdir(parents=True, exist_ok=True)
    with open(Path(runs_root) / ".runner.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another runner is using {runs_root}; let it finish (or stop it) "
                            f"or pass another --runs_root") from None
        yield


class ForwardStops(StopRequests):
    """While active, SIGINT/SIGTERM/SIGHUP to the runner are recorded, so that no new run starts,
    and passed on as SIGTERM to the running runs, which checkpoint and stop (a second one: at
    once). SIGTERM, because a run still starting up ends at once on it, without a traceback;
    SIGHUP, because the runs are in sessions of their own and a closed terminal reaches the
    runner only."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, running: Mapping[subprocess.Popen, Any]):
        super().__init__()
        self.running = running

    def _request(self, number, frame):
        self.signal_number = number
        for process in list(self.running):
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:  # it has just ended
                pass


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_the_runner(runner_pid: int) -> None:
    """In a run's process, before it starts: SIGTERM (checkpoint and stop) when the runner
    dies, however it dies (SIGKILL included), so that no run trains on unwatched. Linux only;
    elsewhere the run directory's lock still keeps a second runner from resuming it meanwhile."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != runner_pid:  # the runner died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def launch(run: Run, device: str | None, settings: Settings) -> subprocess.Popen:
    command = settings.command(run, device)
    run.log.parent.mkdir(parents=True, exist_ok=True)
    runner_pid = os.getpid()
    with open(run.log, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        # a session of its own: a Ctrl-C in the terminal reaches the runner only, which passes
        # it on exactly once (a second signal would stop the run before it checkpoints)
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                env=settings.environment(), start_new_session=True,
                                preexec_fn=lambda: _stop_with_the_runner(runner_pid))


def last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"


def ended(run: Run, exit_code: int, stopping: bool, seconds: float) -> Outcome:
    status = (read_results(run.run_dir) or {}).get("status")
    if status not in ("finished", "diverged"):
        status = "stopped" if stopping and exit_code != 0 else "failed"
    return Outcome(run, status, exit_code=exit_code, seconds=seconds)


def describe(outcome: Outcome) -> str:
    run = outcome.run
    if outcome.status == "finished":
        results = read_results(run.run_dir)
        metrics = ", ".join(f"{name} {value:.4g}" for name, value in results.items()
                            if name.startswith("test_"))
        return f"done     {run.run_dir}: {metrics} ({outcome.seconds:.0f} s)"
    if outcome.status == "stopped":
        then = "resumes it" if run.state() == "interrupted" else "starts it (it had no checkpoint)"
        return f"stopped  {run.run_dir}; the next call {then}"
    return (f"{outcome.status.upper():8} {run.run_dir}: exit {outcome.exit_code}; log {run.log}\n"
            f"         {last_line(run.log)}")


def run_all(runs: Sequence[Run], settings: Settings, say: Callable[[str], None] = print
            ) -> tuple[list[Outcome], int | None]:
    """Run what is not finished, `settings.jobs` at a time, devices round-robin. Returns every
    run's outcome and the signal that stopped the runner, if one did."""
    for run in runs:
        try:
            RunDir(run.run_dir).read_results()
        except Damaged as error:
            say(f"warning: {error}: the run counts as not finished")
    states = {run: run.state() for run in runs}
    done = [Outcome(run, state, skipped=True) for run, state in states.items()
            if state not in ("new", "interrupted")]
    todo = [run for run in runs if states[run] in ("new", "interrupted")]
    resumed = sum(states[run] == "interrupted" for run in todo)
    say(f"{len(runs)} runs: {len(done)} already ended (skipped), {resumed} to resume, "
        f"{len(todo) - resumed} to start; {settings.jobs} at a time")
    free_devices = [settings.devices[slot % len(settings.devices)]
                    for slot in range(min(settings.jobs, len(todo)))][::-1]
    running: dict[subprocess.Popen, tuple[Run, str | None, float]] = {}
    with ForwardStops(running) as stops:
        while running or (todo and stops.signal_number is None):
            while todo and free_devices and stops.signal_number is None:
                run, device = todo.pop(0), free_devices.pop()
                process = launch(run, device, settings)
                running[process] = (run, device, time.monotonic())
                if stops.signal_number is not None:  # the stop came before it was in `running`
                    process.send_signal(signal.SIGTERM)
                how = "resume" if states[run] == "interrupted" else "start"
                say(f"{how:8} {run.run_dir} on {device or 'the default device'} (log {run.log})")
            time.sleep(POLL_SECONDS)
            for process in [process for process in running if process.poll() is not None]:
                run, device, started = running.pop(process)
                free_devices.append(device)
                outcome = ended(run, process.returncode, stops.signal_number is not None,
                                time.monotonic() - started)
                done.append(outcome)
                say(describe(outcome))
    done.extend(Outcome(run, "not started", skipped=True) for run in todo)
    return done, stops.signal_number


def report(outcomes: Sequence[Outcome], stopped_by: int | None) -> str:
    counts = []
    for status in ("finished", "diverged", "failed", "stopped", "not started"):
        these = [o for o in outcomes if o.status == status]
        earlier = sum(o.skipped for o in these) if status in ("finished", "diverged") else 0
        if these:
            counts.append(f"{len(these)} {status}" + (f" ({earlier} in an earlier call)" if earlier else ""))
    lines = [f"{len(outcomes)} runs: " + ", ".join(counts)]
    problems = [o for o in outcomes if o.status in ("failed", "diverged")]
    if problems:
        lines.append("runs that did not finish (delete a diverged run's directory to try it again):")
        lines += [f"  {o.status:8} {o.run.run_dir}  log {o.run.log}" for o in problems]
    if stopped_by is not None:
        lines.append(f"stopped by {signal.Signals(stopped_by).name}: run the same command again "
                     f"to resume the stopped runs and start the others")
    return "\n".join(lines)
