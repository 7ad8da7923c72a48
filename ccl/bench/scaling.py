"""`python -m ccl.bench.scaling CONFIG... [--processes N]`: does a run over N processes
compute what one process computes, and how fast?

For each config: train through the trainer (`Trainer.fit`, the real loop and evaluation) on
synthetic data of `--sizes`, for `--steps` steps (one epoch of that many batches) or `--epochs`
whole epochs, once in this process and once under `torchrun --standalone --nproc_per_node N`;
then report the largest difference of a parameter or buffer between the two, relative to the
tensor's largest value and to its change in training, the difference of the metrics, and the
time per step of each run (the trainer's own timing of the last epoch) with peak memory on CUDA.
The global batch is the config's `batchsize` in both runs. docs/SCALING.md has measured numbers.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from ccl.bench.cases import load_config, synthetic_splits
from ccl.cli import resolve_device
from ccl.distributed import World
from ccl.experiment import build
from ccl.run_dir import ReadOnlyRunDir, RunDir
from ccl.trainer import Trainer
from utils.errors import ConfigError, UserError

PROG = "python -m ccl.bench.scaling"
METRICS = ("train_loss", "val_loss", "val_acc", "val_mse")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone")


def train(config_path: str, overrides: dict, device: str, sizes: Sequence[int], world: World) -> dict:
    """Train `config_path` on synthetic data through the trainer, as rank `world.rank`; returns
    the initial and final state (on the CPU), the metrics and the time per step."""
    config, script = load_config(config_path, overrides)
    world.check(config, uses_fused_pair_loss="fused_pair_loss" not in script.ignored)
    experiment = build(script, config, device, world,
                       splits=synthetic_splits(config.dataset, tuple(sizes), device))
    initial = {name: value.detach().cpu().clone() for name, value in experiment.model.state_dict().items()}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix="ccl-check-") as directory:
        run_dir = RunDir(directory) if world.is_main else ReadOnlyRunDir(directory)
        trainer = Trainer(experiment, run_dir, log=lambda line: None)
        trainer.fit()
    last = trainer.history[-1]
    steps = last["step"] - (trainer.history[-2]["step"] if len(trainer.history) > 1 else 0)
    return {"initial": initial,
            "final": {name: value.detach().cpu() for name, value in experiment.model.state_dict().items()},
            "metrics": {name: last[name] for name in METRICS if name in last},
            "step_ms": 1000 * last["seconds"] / steps, "steps": last["step"],
            "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith("cuda") else None}


# Tensors whose largest value stays below this are rounding noise, which no loss moves: the
# biases of the maps followed by a BatchNorm (their gradient is zero but for rounding)
NOISE = 1e-8


def tensor_gaps(one: dict, many: dict) -> dict[str, tuple[float, float]]:
    """For each floating-point tensor of the state (parameters and buffers) that is not noise,
    the largest difference between the two runs relative to the tensor's largest magnitude and
    to its largest change in training."""
    gaps = {}
    for name, reference in one["final"].items():
        size = reference.abs().max().item() if reference.is_floating_point() else 0.0
        if size < NOISE:
            continue
        gap = (many["final"][name] - reference).abs().max().item()
        change = (reference - one["initial"][name]).abs().max().item()
        gaps[name] = (gap / size, gap / change if change > 0 else 0.0)
    return gaps


def differences(one: dict, many: dict) -> dict:
    """The largest of `tensor_gaps` (and the tensor it is), and of the metrics' relative differences."""
    gaps = tensor_gaps(one, many)
    worst = max(gaps, key=lambda name: gaps[name][0])
    metrics = max(abs(many["metrics"][k] - v) / max(abs(v), 1e-30) for k, v in one["metrics"].items())
    return {"to_value": gaps[worst][0], "to_change": max(change for _, change in gaps.values()),
            "worst": worst, "metrics": metrics}


def run_processes(argv: Sequence[str], processes: int, launcher: Sequence[str] = ("-m", "ccl.bench.scaling"),
                  env: dict | None = None) -> dict:
    """This tool's worker under torchrun with `processes` ranks; returns rank 0's results."""
    with tempfile.TemporaryDirectory(prefix="ccl-check-") as directory:
        out = Path(directory) / "results.pt"
        command = [*TORCHRUN, "--nproc_per_node", str(processes), *launcher, *argv, "--worker", str(out)]
        finished = subprocess.run(command, env=env or os.environ, capture_output=True, text=True,
                                  check=False)
        if finished.returncode != 0:
            tail = "\n".join((finished.stdout + finished.stderr).splitlines()[-20:])
            raise UserError(f"the {processes}-process run failed (exit {finished.returncode}):\n{tail}")
        return torch.load(out, weights_only=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("configs", nargs="+", help="configs, e.g. yaml/cnn/cifar10_ccl.yaml")
    parser.add_argument("--processes", type=int, default=2, help="ranks of the torchrun run (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="train one epoch of this many batches (default 3)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="instead: this many whole epochs of --sizes' training set (time: the last)")
    parser.add_argument("--sizes", type=int, nargs=3, default=(256, 64, 64), metavar=("TRAIN", "VAL", "TEST"),
                        help="synthetic training, validation and test images (default 256 64 64)")
    parser.add_argument("--batchsize", type=int, default=None, help="the global batch (default: the config's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1)")
    parser.add_argument("--rounding", action="store_true",
                        help="also train one process with twice the threads: how far rounding alone "
                             "(other sums' order) moves the same run, the floor of the differences")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # a rank's side
    return parser


def overrides_of(args: argparse.Namespace) -> dict:
    keys = {"epochs": args.epochs or 1, "train_batches_per_epoch": 0 if args.epochs else args.steps}
    return keys | ({"batchsize": args.batchsize} if args.batchsize else {})


def report(config: str, processes: int, one: dict, many: dict) -> str:
    gap = differences(one, many)
    memory = (f", peak {one['peak_mb']:.0f} / {many['peak_mb']:.0f} MB" if one["peak_mb"] is not None else "")
    return (f"{config}: after {one['steps']} steps, 1 vs {processes} processes: parameters differ by "
            f"{gap['to_value']:.1e} of their size ({gap['worst']}; {gap['to_change']:.1e} of their "
            f"change), metrics by "
            f"{gap['metrics']:.1e}; {one['step_ms']:.1f} vs {many['step_ms']:.1f} ms per step "
            f"(ratio {many['step_ms'] / one['step_ms']:.2f}){memory}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.processes < 2 or args.steps < 1 or args.threads < 1 or (args.epochs or 1) < 1:
            raise ConfigError("--processes must be at least 2, --steps, --epochs and --threads positive")
        torch.set_num_threads(args.threads)
        world = World.from_environment()
        device = world.device(resolve_device(args.device))
        if args.worker is not None:  # one rank of the torchrun run
            with world.joined(device, None):
                results = {config: train(config, overrides_of(args), device, args.sizes, world)
                           for config in args.configs}
            if world.is_main:
                torch.save(results, args.worker)
            return 0
        ones = {config: train(config, overrides_of(args), device, args.sizes, world) for config in args.configs}
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        manys = run_processes([arg for arg in argv], args.processes, env=env)
        for config in args.configs:
            print(report(config, args.processes, ones[config], manys[config]))
        if args.rounding:
            torch.set_num_threads(2 * args.threads)
            for config in args.configs:
                gap = differences(ones[config], train(config, overrides_of(args), device, args.sizes, world))
                print(f"{config}: one process, {args.threads} vs {2 * args.threads} threads: parameters differ "
                      f"by {gap['to_value']:.1e} of their size ({gap['worst']}; {gap['to_change']:.1e} of "
                      f"their change), metrics by {gap['metrics']:.1e}")
        return 0
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
