"""What a cluster job of `python -m ccl.reproduce run --executor slurm` runs:
`python -m ccl.reproduce.job SPEC` (SPEC: the run and how to launch it, as JSON; written by
ccl/reproduce/cluster.py).

It decides when the job starts, not when it was submitted, what the run needs, as the local
runner does: nothing if it has ended, `--resume` if it has a checkpoint, else a fresh start; then
it becomes the entry script (exec), its output appended to the run's log. The run directory's
lock keeps a second job of the same run from training it at the same time.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

from ccl.reproduce.runner import Run, Settings
from ccl.run_dir import UNREADABLE


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    run = Run(Path(spec["config"]), spec["seed"], tuple(tuple(pair) for pair in spec["overrides"]),
              Path(spec["run_dir"]))
    settings = Settings(devices=(spec["device"],), threads=spec["threads"], launcher=tuple(spec["launcher"]),
                        data_root=None if spec["data_root"] is None else Path(spec["data_root"]))
    run.log.parent.mkdir(parents=True, exist_ok=True)
    log = open(run.log, "a")  # noqa: SIM115  (it becomes the entry script's stdout and stderr)
    state = run.state()
    if state in ("finished", "diverged"):
        log.write(f"job: {run.run_dir} has {state}: nothing to do\n")
        return 0
    if state == UNREADABLE:
        log.write(f"job: {run.run_dir} cannot be read (its results.json) and has no checkpoint: left alone\n")
        return 1
    command = settings.command(run, spec["device"])
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    os.dup2(log.fileno(), sys.stdout.fileno())
    os.dup2(log.fileno(), sys.stderr.fileno())
    os.execvpe(command[0], command, settings.environment())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
