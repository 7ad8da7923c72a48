"""`python -m ccl.analysis RUN_DIR`: the analysis measures (CKA, weight cosines, gradient angles)
of a run's best model, on the first N images of its test set (default) or validation split.

    python -m ccl.analysis RUN_DIR [--split test|val] [--samples N] [--out FILE]
                                   [--data_root DIR] [--device D]

The run is rebuilt from its config.yaml (the script, config and data root it was started with)
and best.pt. The images are taken in the split's order as `utils.data.load_splits` returns it:
the test set in its file order, the validation split in the order of its seeded draw (so its
first N are a random sample fixed by the run's seed, the probe batch of `analysis_every`).
Writes one JSON object (default RUN_DIR/analysis.json) with the keys of an analysis.jsonl
record - epoch (the best model's), layers, cka, weight_cosine, grad_angle_deg - and split,
samples, and `weight_change`: how far training moved each layer's forward and feedback weight
from the initial one the run drew from its seed, ||W - W_0|| / ||W_0|| (0 exactly for a network
that never trained, e.g. the feedback network of BP or of `lr_B: 0`).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ccl.cli import resolve_device
from ccl.measures import analyse, probe_batch, weight_changes
from ccl.run_dir import ANALYSIS_OF_BEST, RunDir
from ccl.scripts import rebuild
from utils.errors import ConfigError, UserError
from utils.io import WriteError, write_json

PROG = "python -m ccl.analysis"
DEFAULT_SAMPLES = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("run", type=Path, metavar="RUN_DIR")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the images: the test set (default) or the run's validation split")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"the first N images of the split (default {DEFAULT_SAMPLES}; all, if it has fewer)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON file (default RUN_DIR/{ANALYSIS_OF_BEST})")
    parser.add_argument("--data_root", type=Path, default=None, help="datasets (default: the run's own)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    return parser


def analyse_best(run_dir: RunDir, split: str, samples: int, data_root: Path | None, device: str) -> dict:
    if samples < 1:
        raise ConfigError(f"--samples {samples}: the probe batch needs at least 1 image")
    experiment = rebuild(run_dir, data_root, device, best=False)
    initial = [layer.state_dict() for layer in experiment.model.layers]
    initial = [{name: value.clone() for name, value in state.items()} for state in initial]
    run_dir.load_best_into(experiment.model)
    loader = getattr(experiment.data, split)
    inputs, targets = probe_batch(loader, samples, experiment.config.seed)
    return {"epoch": run_dir.best_epoch(experiment.config), "split": split, "samples": len(targets),
            **analyse(experiment.model, experiment.objective, experiment.rule.loss, inputs, targets),
            "weight_change": weight_changes(experiment.model, initial)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = RunDir(args.run)
    try:
        record = analyse_best(run_dir, args.split, args.samples, args.data_root,
                              resolve_device(args.device))
        out = args.out or run_dir / ANALYSIS_OF_BEST
        write_json(out, record)
    except WriteError as error:
        hint = "; pass --out FILE to write it elsewhere" if args.out is None else ""
        print(f"{PROG}: error: {error}{hint}", file=sys.stderr)
        return error.exit_code
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"analysed the best model (epoch {record['epoch']}) of {args.run} on {record['samples']} "
          f"{args.split} images -> {out}")
    return 0
