"""Run every (config, seed) that is not finished yet, several at a time, each in its own process.

A run lives in <runs_root>/<config folder>/<config name>[-key=value...]/seed<seed> (the layout
the entry scripts use under runs/ by default), its output goes to seed<seed>.log beside it. A run
is its directory: one config named under two spellings, or twice, is one run. What the directory
holds decides what happens to the run:

    results.json, status finished   skipped
    results.json, status diverged   skipped and reported: with the same seed it diverges again
    checkpoint.pt                   resumed (--resume)
    results.json that cannot be read, no checkpoint   reported and left alone
    a lock held by another process  left to it (a job or run still training it)
    anything else                   started (the entry script starts afresh only where no epoch
                                    has finished; the runner never passes --overwrite)

A run that has ended or was interrupted must have been trained with the config the runner would
run now (its config.yaml against the config file and overrides): one edited since is refused,
naming the keys that differ, so that no table mixes the two.

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
from ccl.config import KEYS, Config, build_config, read_yaml_sections
from ccl.reproduce.paper import released_procedure
from ccl.run_dir import READ_ONLY, UNREADABLE, Damaged, RunDir
from ccl.scripts import BY_CONFIG_FOLDER
from ccl.trainer import StopRequests
from utils.errors import ConfigError, UserError
from utils.provenance import REPO_ROOT

POLL_SECONDS = 0.2
BUSY = "busy"  # another process holds the run directory's lock


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
        # no --overwrite: the entry script clears only a directory where no epoch has finished
        return [*self.launcher, str(run.script), "--yaml", str(run.config), "--seed", str(run.seed),
                "--out_dir", str(run.run_dir), *keys, *common]

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
    runs: dict[Path, Run] = {}
    for config in map(Path, configs):
        keys = dict(overrides)
        if procedure == "released":
            keys = {**released_procedure({**read_yaml_sections(config), **overrides},
                                         config.parent.name), **overrides}
        for seed in seeds:
            run = Run(config, seed, tuple(keys.items()), default_out_dir(config, keys, seed, runs_root))
            check_name_lengths(run.run_dir)
            # one directory, one run: the same config under two spellings (relative and
            # absolute, a link) runs once; two different configs may not share it
            same = runs.setdefault(run.run_dir.resolve(), run)
            if same is not run and planned_config(same) != planned_config(run):
                raise ConfigError(f"{same.config} and {config} are different configs of the same name: "
                                  f"both would train in {run.run_dir}; rename one, or run them with "
                                  f"different --runs_root")
    return list(runs.values())


def planned_config(run: Run) -> Config:
    """The config the entry script would train for `run`, as its config.yaml will hold it."""
    script = BY_CONFIG_FOLDER[run.config.parent.name]
    return build_config(read_yaml_sections(run.config), {**dict(run.overrides), "seed": run.seed},
                        {"task": script.task, **script.defaults}, str(run.config))


def changed_keys(run: Run) -> dict[str, tuple[Any, Any]]:
    """{key: (value in the run directory's config.yaml, value the runner would run)} of a run
    that has ended or was interrupted; empty when they agree or nothing was kept yet."""
    if run.state() not in ("finished", "diverged", "interrupted"):
        return {}
    try:
        saved, _ = RunDir(run.run_dir).saved_config()
    except ConfigError:  # not a run directory of this project: the entry script refuses it
        return {}
    planned = planned_config(run)
    return {name: (getattr(saved, name), getattr(planned, name)) for name in KEYS
            if getattr(saved, name) != getattr(planned, name)}


def check_unchanged(runs: Sequence[Run]) -> None:
    """Refuse runs trained with another config than the one they would run now."""
    changed = {run: keys for run in runs if (keys := changed_keys(run))}
    if not changed:
        return
    lines = [f"{run.run_dir}: " + ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in keys.items())
             for run, keys in list(changed.items())[:5]]
    more = f"\n  ... and {len(changed) - 5} more" if len(changed) > 5 else ""
    raise ConfigError(f"{len(changed)} run(s) were trained with another config than the one they would "
                      f"run now (saved -> now):\n  " + "\n  ".join(lines) + more + "\nrestore the config, "
                      "or move those run directories away (or give another --runs_root) to train it")


def check_name_lengths(run_dir: Path) -> None:
    """Every name of the run directory's path fits the file system (a grid of long values
    makes long directory names)."""
    existing = Path(run_dir).absolute()
    while not os.path.exists(existing):  # False, not an error, for a name too long
        existing = existing.parent
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    for name in Path(run_dir).parts:
        if len(name.encode()) > limit:
            raise ConfigError(f"the run directory name {name[:40]}... has {len(name.encode())} characters, "
                              f"more than the {limit} the file system allows: it names every key a run "
                              f"overrides; set fewer keys per run (--grid, --KEY), or put the fixed ones "
                              f"in a config file of their own")


@dataclass
class Outcome:
    run: Run
    # finished, diverged, failed, unreadable or busy (left alone), stopped or not started (the
    # runner was stopped)
    status: str
    skipped: bool = False
    exit_code: int | None = None
    seconds: float = 0.0


@contextmanager
def only_runner(runs_root: Path) -> Iterator[None]:
    """One runner per runs root: two would resume the same interrupted run at the same time."""
    root = Path(runs_root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--runs_root {root} is a file; give a directory (it is made if missing)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / ".runner.lock", "w")  # noqa: SIM115  (closed below)
    except OSError as error:
        why = "is read-only" if error.errno in READ_ONLY else "cannot be written"
        raise ConfigError(f"--runs_root {root} {why} ({error.strerror}); give a directory the runs "
                          f"may be written to") from None
    with lock:
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
    states = {run: run.state() for run in runs}
    for run in runs:
        try:
            RunDir(run.run_dir).read_results()
        except Damaged as error:
            then = ("it is resumed from its checkpoint" if states[run] == "interrupted" else
                    "it has no checkpoint, so the run is left alone: move the file away to train it again")
            say(f"warning: {error}: {then}")
        if states[run] in ("new", "interrupted") and (holder := RunDir(run.run_dir).holder()):
            states[run] = BUSY
            say(f"busy     {run.run_dir}: process {holder} is writing it; left to it")
    done = [Outcome(run, state, skipped=True) for run, state in states.items()
            if state not in ("new", "interrupted")]
    todo = [run for run in runs if states[run] in ("new", "interrupted")]
    resumed = sum(states[run] == "interrupted" for run in todo)
    ended_before = sum(o.status in ("finished", "diverged") for o in done)
    left = f", {len(done) - ended_before} left alone" if len(done) > ended_before else ""
    say(f"{len(runs)} runs: {ended_before} already ended (skipped){left}, {resumed} to resume, "
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
    for status in ("finished", "diverged", "failed", UNREADABLE, BUSY, "stopped", "not started"):
        these = [o for o in outcomes if o.status == status]
        earlier = sum(o.skipped for o in these) if status in ("finished", "diverged") else 0
        if these:
            counts.append(f"{len(these)} {status}" + (f" ({earlier} in an earlier call)" if earlier else ""))
    lines = [f"{len(outcomes)} runs: " + ", ".join(counts)]
    problems = [o for o in outcomes if o.status in ("failed", "diverged", UNREADABLE)]
    if problems:
        lines.append("runs that did not finish (delete a diverged run's directory to try it again; "
                     "an unreadable one is left as it is):")
        lines += [f"  {o.status:8} {o.run.run_dir}  log {o.run.log}" for o in problems]
    if stopped_by is not None:
        lines.append(f"stopped by {signal.Signals(stopped_by).name}: run the same command again "
                     f"to resume the stopped runs and start the others")
    return "\n".join(lines)
