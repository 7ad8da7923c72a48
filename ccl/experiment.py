"""From a command line to a finished run: what the three entry scripts share.

An entry script declares a `Script` (which task, architectures and datasets it accepts, how it
batches data and builds its task) and calls `main(script)`.
"""
from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ccl.rules import RULES
from ccl.trainer import CHECKPOINT, RESULTS, Diverged, Interrupted, Loaders, Trainer
from models import build_model
from utils.cli import RunOptions, parse_command_line
from utils.config import Config, config_yaml
from utils.data import SOURCE_OF, SOURCES, Splits, load_splits
from utils.data.recipes import Data
from utils.errors import ConfigError, UserError
from utils.io import write_json, write_text
from utils.provenance import provenance
from utils.seed import set_seed

EXIT_DIVERGED = 3


@dataclass(frozen=True)
class Script:
    prog: str
    description: str
    task: str
    architectures: tuple[str, ...]
    datasets: tuple[str, ...]
    make_data: Callable[[Config, Splits], Data]
    make_task: Callable[[Config, int], Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Config], None] = lambda config: None
    # called with (model holding the best weights, data, run directory) once a run is tested
    report: Callable[[torch.nn.Module, Data, Path], None] | None = None

    def validate(self, config: Config) -> None:
        """The combinations the released script rejects, or would silently get wrong."""
        def allowed(key, choices):
            if getattr(config, key) not in choices:
                raise ConfigError(f"{self.prog} takes {key} {' or '.join(choices)}, "
                                  f"not {getattr(config, key)!r}")
        allowed("task", (self.task,))
        allowed("architecture", self.architectures)
        allowed("dataset", self.datasets)
        source = SOURCES[SOURCE_OF[config.dataset]]
        if config.num_chn != source.channels:
            raise ConfigError(f"num_chn is {config.num_chn} but {config.dataset} images have "
                              f"{source.channels} channel(s); set num_chn: {source.channels}")
        if config.num_classes is not None and config.num_classes != source.num_classes:
            raise ConfigError(f"num_classes is {config.num_classes} but {config.dataset} has "
                              f"{source.num_classes} classes; set num_classes: {source.num_classes} "
                              f"or remove the key")
        self.check(config)


def main(script: Script, argv: Sequence[str] | None = None) -> int:
    """Parse the command line, train, test; returns the process exit code."""
    try:
        config, options = parse_command_line(argv, script.prog, script.description,
                                             {"task": script.task, **script.defaults})
        script.validate(config)
        return run(script, config, options)
    except UserError as error:
        print(f"{script.prog}: error: {error}", file=sys.stderr)
        return error.exit_code


def open_run_dir(options: RunOptions) -> Path:
    run_dir = Path(options.out_dir)
    if options.resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise ConfigError(f"--resume {run_dir}: no {CHECKPOINT} there to continue from; "
                              f"start the run again with --overwrite")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not options.overwrite:
            raise ConfigError(f"run directory {run_dir} already exists: pass --resume {run_dir} to "
                              f"continue it, --overwrite to start it again, or --out_dir elsewhere")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run(script: Script, config: Config, options: RunOptions) -> int:
    run_dir = open_run_dir(options)
    if not options.resume:
        write_text(run_dir / "config.yaml", config_yaml(config, {"script": script.prog, **options.as_dict()}))
    device = torch.device(options.device)
    set_seed(config.seed)
    data = script.make_data(config, load_splits(config.dataset, options.data_root, config.seed).to(device))
    model = build_model(config, data.input_shape, data.num_classes).to(device)
    trainer = Trainer(config, model, script.make_task(config, data.num_classes), RULES[config.method],
                      Loaders(data.train, data.val, data.test), run_dir)
    if options.resume:
        trainer.restore(torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=True))
        print(f"resuming {run_dir} at epoch {trainer.progress.epoch + 1}, batch {trainer.progress.batch}")
    identity = {"seed": config.seed, "method": config.method, "dataset": config.dataset,
                "config": str(options.yaml) if options.yaml else None,
                "epochs_planned": config.epochs, **provenance(device)}
    try:
        results = trainer.fit()
    except Diverged as error:
        write_json(run_dir / RESULTS, {"status": "diverged", "diverged_at_step": error.step,
                                       "best_epoch": trainer.best and trainer.best["epoch"],
                                       **identity})
        print(f"{script.prog}: error: training diverged: {error}. The best model so far is in "
              f"{run_dir}; lower the learning rates (--lr_F, --lr_B) or clip gradients "
              f"(--grad_clip_F, --grad_clip_B).", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as stop:
        print(f"\n{script.prog}: stopped by {stop} at epoch {trainer.progress.epoch + 1}, batch "
              f"{trainer.progress.batch}; checkpoint saved. Resume with:\n"
              f"  python {script.prog} --resume {run_dir}", file=sys.stderr)
        return 128 + stop.signal_number
    results = {**results, **identity}
    write_json(run_dir / RESULTS, results)
    if script.report is not None:
        script.report(model, data, run_dir)
    print(" ".join(f"{k} {v:.4g}" for k, v in results.items() if k.startswith("test_"))
          + f"  (best epoch {results['best_epoch']}, {results['wall_seconds']:.0f}s) -> {run_dir}")
    return 0
