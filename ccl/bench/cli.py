"""`python -m ccl.bench`: how fast BP and CCL train here. See docs/PERFORMANCE.md."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from ccl.acceleration import SPEED_KEYS
from ccl.bench import report
from ccl.bench.cases import CASES
from ccl.bench.epoch import benchmark_epoch, compare_pipelines, load_mnist
from ccl.bench.flops import FLOPS_ARCHS, TP_FLOPS_CONFIGS, count_flops, count_tp_flops
from ccl.bench.numerics import STEPS as NUMERICS_STEPS
from ccl.bench.numerics import compare
from ccl.bench.steps import Settings, benchmark_architecture
from ccl.bench.tp import time_tp_steps
from ccl.cli import DEFAULT_DATA_ROOT, resolve_device
from ccl.config import KEYS
from utils.errors import ConfigError, DataError, UserError
from utils.io import write_json
from utils.provenance import provenance

PROG = "python -m ccl.bench"
# --quick, for the test suite (its numbers mean nothing): batches of 4, one repeat of 2 steps
# after 1 warm-up step, one epoch of 8 training images, the pipelines compared on 512 images
QUICK_BATCH, QUICK_STEPS, QUICK_EPOCH_SIZES, QUICK_PIPELINE_IMAGES = 4, 2, (8, 4, 4), 512
TP_STEPS = 5  # steps per repeat of --tp: a TP step is long
QUICK_NOTE = ("--quick is a smoke test (batches of 4, 2 timed steps, an epoch of 8 images): its numbers "
              "mean nothing, speed-ups and ratios included; run without --quick to measure")
DEFAULTS = {"archs": list(CASES), "repeats": 5, "steps": None, "warmup": 3,
            "data_root": DEFAULT_DATA_ROOT, "no_pipeline": False, "profile": False}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Measure, on one device, the training step of BP and CCL on every "
                    "architecture (time, throughput, peak memory, where the time goes) and a "
                    "training epoch on real MNIST with our data pipeline and with torchvision's. "
                    "With --epoch CONFIG: time whole epochs of that config instead.")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    steps = parser.add_argument_group("training steps and the pipeline comparison (the default)")
    steps.add_argument("--archs", nargs="+", choices=list(CASES), default=None, metavar="ARCH",
                       help=f"architectures to time (default: all: {' '.join(CASES)})")
    steps.add_argument("--repeats", type=int, default=None,
                       help=f"timed repeats per method, the median reported (default {DEFAULTS['repeats']})")
    steps.add_argument("--steps", type=int, default=None,
                       help="steps per repeat (default: as many as take about 0.5 s, 3 to 200)")
    steps.add_argument("--warmup", type=int, default=None,
                       help=f"untimed steps before timing (default {DEFAULTS['warmup']})")
    steps.add_argument("--data_root", type=Path, default=None,
                       help=f"MNIST's folder, for the pipeline comparison (default {DEFAULTS['data_root']})")
    steps.add_argument("--no_pipeline", action="store_true", help="skip the pipeline comparison")
    steps.add_argument("--profile", action="store_true",
                       help="also list the operators that take most of a step's time (torch.profiler)")
    other = parser.add_argument_group("instead of the steps and the pipeline comparison")
    other.add_argument("--epoch", metavar="CONFIG", default=None,
                       help="time whole training epochs of CONFIG (e.g. yaml/cnn/cifar10_ccl.yaml) on "
                            "synthetic data of the dataset's size held on the device")
    other.add_argument("--numerics", action="store_true",
                       help="how far the speed-ups chosen (--compile 1, --precision bf16, "
                            "--fused_pair_loss 1) move the numbers: a few CCL steps of each of "
                            "--archs against the default float32 step")
    other.add_argument("--tp", action="store_true",
                       help="time the training step of BP and of every target-propagation rule on "
                            "their MNIST (or --archs mlp_cifar10) configs, side by side, and the cost "
                            "of a full Table 1 row (5 seeds) of each")
    other.add_argument("--flops", action="store_true",
                       help="count the training FLOPs per sample of one step of every rule (BP, CCL "
                            "and the baselines) on --archs (default: the MLPs at batch 32 and the "
                            "CNNs at their configs' batch), beside the paper's Table 2")
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs of --epoch and of the pipeline comparison (default 2: the first "
                             "includes the warm-up)")
    for name in SPEED_KEYS:
        key = KEYS[name]
        parser.add_argument(f"--{name}", type=key.type, choices=key.choices, default=key.default,
                            help=f"config key set in every run: {key.help}")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny batches, one short repeat (checks that it runs; numbers mean nothing)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this file")
    return parser


def check(args: argparse.Namespace) -> None:
    """Refuse what cannot be measured; then fill in the defaults of the options left out."""
    for name in ("repeats", "steps", "warmup", "epochs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value}")
    if args.epoch and args.numerics:
        raise ConfigError("--epoch and --numerics are two separate measurements: run them one at a time")
    if args.flops and (args.epoch or args.numerics):
        raise ConfigError("--flops is a measurement of its own: run it without --epoch and --numerics")
    if args.tp and (args.epoch or args.numerics or args.flops):
        raise ConfigError("--tp is a measurement of its own: run it without --epoch, --numerics and --flops")
    if args.tp and args.archs is None:
        args.archs = ["mlp_mnist"]
    if args.tp and set(args.archs) - set(TP_FLOPS_CONFIGS):
        raise ConfigError(f"--tp times the MLPs only: --archs {' '.join(TP_FLOPS_CONFIGS)}")
    if args.flops and args.compile:
        raise ConfigError("--flops counts the products of the eager step (FlopCounterMode sees none "
                          "inside compiled code): leave out --compile")
    given = [name for name in DEFAULTS if getattr(args, name) not in (None, False)
             and not ((args.numerics or args.flops) and name == "archs")
             and not (args.tp and name in ("archs", "repeats", "steps", "warmup"))]
    mode = ("--epoch" if args.epoch else "--numerics" if args.numerics
            else "--flops" if args.flops else "--tp" if args.tp else None)
    if mode and given:
        raise ConfigError(f"{', '.join('--' + n for n in given)} do not apply to {mode}")
    if args.numerics and all(getattr(args, name) == KEYS[name].default for name in SPEED_KEYS):
        raise ConfigError("--numerics compares the speed-ups with the default step: add one or more "
                          "of --compile 1, --precision bf16, --fused_pair_loss 1")
    if args.flops and args.archs is None:
        args.archs = list(FLOPS_ARCHS)
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    speed_keys = {name: getattr(args, name) for name in SPEED_KEYS}
    if args.quick:
        overrides = {**speed_keys, "batchsize": QUICK_BATCH}
        settings = Settings(repeats=1, steps=QUICK_STEPS, warmup=1, overrides=overrides, profile=args.profile)
        epochs, epoch_sizes = 1, QUICK_EPOCH_SIZES
    else:
        overrides = speed_keys
        settings = Settings(args.repeats, args.steps, args.warmup, overrides, args.profile)
        epochs, epoch_sizes = args.epochs, None
    results = {"provenance": provenance(device), "threads": torch.get_num_threads(),
               "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                            "overrides": overrides}}
    print(f"{PROG} on {results['provenance']['device_name']} ({device}, "
          f"{torch.get_num_threads()} CPU threads)")
    if args.quick:
        print(f"note: {QUICK_NOTE}")
    if args.numerics:
        numerics = [compare(arch, overrides, device, QUICK_STEPS if args.quick else NUMERICS_STEPS)
                    for arch in args.archs]
        settings_text = ", ".join(f"{name} {value}" for name, value in overrides.items())
        print(f"\nCCL steps with {settings_text} against the default float32 step: the largest "
              f"relative difference of a parameter (to its change in training) and of a loss\n"
              + report.numerics_table(numerics))
        return {**results, "numerics": numerics}
    if args.tp:
        tp_steps = [result for arch in args.archs for result in
                    time_tp_steps(arch, device, settings.repeats, settings.steps or TP_STEPS, settings.warmup,
                                  QUICK_BATCH if args.quick else None)]
        print("\nTarget propagation against BP: the trainer's step (the feedback phase included), "
              "median of the repeats, on synthetic images\n" + report.tp_steps_table(tp_steps))
        return {**results, "tp_steps": [result.as_dict() for result in tp_steps]}
    if args.flops:
        flops = count_flops(args.archs, speed_keys, device)
        print("\nTraining FLOPs of one step, millions per sample (FlopCounterMode: matrix products "
              "and convolutions; the optimizer's update counts 0)\n" + report.flops_table(flops))
        tp_flops = count_tp_flops(args.archs, device)
        if tp_flops:
            print("\nTarget propagation: one iteration (K feedback calls, targets, forward losses and "
                  "their backward; no forward update), millions per sample (torch.profiler: products "
                  "and elementwise mul/add, the paper's convention)\n"
                  + report.flops_table([r for r in flops if r.method == "BP"] + tp_flops))
        return {**results, "flops": [result.as_dict() for result in flops],
                "tp_flops": [result.as_dict() for result in tp_flops]}
    if args.epoch:
        epoch = benchmark_epoch(args.epoch, overrides, device, epochs, epoch_sizes)
        print("\nTraining epochs (synthetic data, the trainer's timing)\n" + report.epoch_table(epoch))
        return {**results, "epoch": epoch.as_dict()}
    mnist = None
    if not args.no_pipeline:  # a missing file stops the benchmark now, not after the steps
        try:
            mnist = load_mnist(args.data_root)
        except DataError as error:
            raise DataError(str(error), "Or leave the pipeline comparison out: --no_pipeline.") from None
    steps = [result for arch in args.archs for result in benchmark_architecture(arch, settings, device)]
    print("\nTraining step: loss + optimizer step (median of the repeats)\n" + report.steps_table(steps))
    print("\nWhere a step's time goes (ms per step; data: making the batch)\n" + report.split_table(steps))
    if args.profile:
        print("\nThe costliest operators of a step (own time on the device, ms per step)")
        for result in steps:
            print("\n" + report.operators_table(result))
    results["steps"] = [result.as_dict() for result in steps]
    results["ccl_bp_ratio"] = {arch: report.ratio(steps, arch) for arch in args.archs}
    if not args.no_pipeline:
        pipeline = compare_pipelines(args.data_root, mnist, speed_keys, device, epochs,
                                     QUICK_PIPELINE_IMAGES if args.quick else None)
        print("\nMNIST MLP CCL training epoch (the trainer's timing): our pipeline and torchvision's\n"
              + report.pipeline_table(pipeline))
        results["pipeline"] = pipeline.as_dict()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        check(args)
        results = run(args)
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code
    if args.quick:  # again under the tables, beside their headlines
        print(f"\nnote: {QUICK_NOTE}")
        results["note"] = QUICK_NOTE
    if args.json:
        write_json(args.json, results)
        print(f"\n-> {args.json}")
    return 0
