"""Running main_class_mlp.py on the tiny test data, in this process or as a real process, and
reading back what a run left in its directory."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

import ccl.experiment as experiment
from ccl.rules import RULES, Rule
from ccl.scripts import MLP

MLP_YAML = str(REPO / "yaml/mlp/mnist_ccl.yaml")
TIMING = {"seconds", "eval_seconds", "wall_seconds", "train_seconds"}  # differ run to run
# One thread: identical arithmetic in this process and in subprocesses, and no OpenMP
# spin-waiting on a busy machine (which slows these small runs tenfold).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def with_loss(method: str, wrapper) -> Rule:
    """The rule `method` (to patch into RULES) whose loss, and loss terms, are
    `wrapper(original, *args, **settings)`: a test's hook around the loss of every step (the
    trainer's step computes the terms where a rule has them, the analysis the loss)."""
    rule = RULES[method]

    def wrapped(original):
        if original is None:
            return None
        return lambda *args, **settings: wrapper(original, *args, **settings)

    return dataclasses.replace(rule, loss=wrapped(rule.loss), loss_terms=wrapped(rule.loss_terms))


def run_mlp(*args: str) -> int:
    """main_class_mlp.py in this process; returns its exit code."""
    return experiment.main(MLP, list(args))


def start_mlp(checksum_file: Path, *args: str) -> subprocess.Popen:
    """main_class_mlp.py as a process of its own (on the test data's checksums)."""
    return subprocess.Popen([sys.executable, str(REPO / "tests/launch.py"), str(checksum_file),
                             "main_class_mlp.py", *args],
                            cwd=REPO, env=ONE_THREAD, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    """Poll until `path` exists; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before {path.name} appeared:\n"
                        f"{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path.name} did not appear within {timeout}s")
        time.sleep(0.005)


def outcome(run_dir: Path) -> tuple[list[dict], dict]:
    """metrics.jsonl rows and results.json of a run, without the timing fields."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((run_dir / "results.json").read_text())
    strip = lambda row: {k: v for k, v in row.items() if k not in TIMING}  # noqa: E731
    return [strip(row) for row in rows], strip(results)


def write_results(root: Path, setting: str, seed: int, **results) -> None:
    """A finished run's results.json, as `ccl.reproduce table` reads it, without the run."""
    path = root / setting / f"seed{seed}/results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "finished", "wall_seconds": 60.0, "best_epoch": 1, **results}))
