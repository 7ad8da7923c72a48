"""From a command line to a finished run: what the three entry scripts share.

An entry script declares a `Script` (which task, architectures and datasets it accepts, how it
batches data and builds its task) and calls `main(script)`.
"""
from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ccl.acceleration import check_supported
from ccl.rules import RULES, add_fixed_feedback
from ccl.trainer import CHECKPOINT, RESULTS, Diverged, Interrupted, Loaders, Trainer
from models import build_model
from utils.cli import RunOptions, parse_command_line
from utils.config import KEYS, Config, config_yaml, ignored_settings
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
    methods: tuple[str, ...] = tuple(RULES)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Config], None] = lambda config: None
    ignored: tuple[str, ...] = ()  # keys the script never reads (a non-default value is warned about)
    # called with (model holding the best weights, data, run directory) once a run is tested
    report: Callable[[torch.nn.Module, Data, Path], None] | None = None

    def validate(self, config: Config) -> None:
        """The combinations the released script rejects, or would silently get wrong."""
        def allowed(key, choices):
            if getattr(config, key) not in choices:
                raise ConfigError(f"{self.prog} takes {key} {' or '.join(choices)}, "
                                  f"not {getattr(config, key)!r}")
        allowed("task", (self.task,))
        allowed("method", self.methods)
        allowed("architecture", self.architectures)
        allowed("dataset", self.datasets)
        source = SOURCES[SOURCE_OF[config.dataset]]
        if config.num_chn != source.channels:
            raise ConfigError(f"num_chn is {config.num_chn} but the images of dataset {config.dataset} "
                              f"have {source.channels} channel(s); set num_chn: {source.channels}")
        if config.num_classes is not None and config.num_classes != source.num_classes:
            raise ConfigError(f"num_classes is {config.num_classes} but dataset {config.dataset} has "
                              f"{source.num_classes} classes; set num_classes: {source.num_classes} "
                              f"or remove the key")
        self.check(config)

    def warnings(self, config: Config) -> list[str]:
        """Settings the run ignores, as the released script does: one line each."""
        notes = [f"{name} {getattr(config, name)!r} is ignored: {self.prog} does not use it"
                 for name in self.ignored if getattr(config, name) != KEYS[name].default]
        if self.task == "classification" and config.task_transform not in (None, "none"):
            notes.append(f"task_transform {config.task_transform!r} is ignored: it applies to the "
                         f"autoencoder (main_ae.py) only")
        return notes + ignored_settings(config, unread=self.ignored)


def main(script: Script, argv: Sequence[str] | None = None) -> int:
    """Parse the command line, train, test; returns the process exit code."""
    try:
        config, options = parse_command_line(argv, script.prog, script.description,
                                             {"task": script.task, **script.defaults})
        script.validate(config)
        check_supported(config, options.device)
        for note in script.warnings(config):
            print(f"{script.prog}: warning: {note}", file=sys.stderr)
        return run(script, config, options)
    except UserError as error:
        print(f"{script.prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the training loop started
        print(f"\n{script.prog}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def open_run_dir(options: RunOptions) -> Path:
    """The run directory, created; an existing run is continued (--resume), deleted
    (--overwrite) or left alone (an error)."""
    run_dir = Path(options.out_dir)
    if options.resume:
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} is a file; choose another --out_dir")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not options.overwrite:
            raise ConfigError(f"run directory {run_dir} already exists: pass --resume {run_dir} to "
                              f"continue it, --overwrite to start it again, or --out_dir elsewhere")
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--overwrite deletes run directories only, and {run_dir} has no "
                              f"config.yaml: choose another --out_dir")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the run directory {run_dir}: {error}") from None
    return run_dir


def load_checkpoint(run_dir: Path, config: Config) -> dict | None:
    """The checkpoint of the run in `run_dir` (None before its first epoch ended), on the CPU.
    Its config must be the run's: a changed config.yaml would silently change the run."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unpickling failure means the same thing)
        raise UserError(f"{path} cannot be read ({type(error).__name__}: {error}); the run cannot "
                        f"be continued: start it again with --overwrite") from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise UserError(f"{path} is not a checkpoint of this project; start the run again with "
                        f"--overwrite")
    changed = {name: (value, getattr(config, name)) for name, value in state["config"].items()
               if name in KEYS and value != getattr(config, name)}
    if changed:
        edits = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
        raise ConfigError(f"{run_dir / 'config.yaml'} was changed after the run started ({edits}); "
                          f"a run keeps its config: undo the change, or start a new run with "
                          f"--yaml and another --out_dir")
    return state


def resume(trainer: Trainer, checkpoint: dict | None, prog: str) -> None:
    """Put the trainer where the checkpoint left the run (nowhere to go: start from scratch)."""
    run_dir = trainer.run_dir
    if checkpoint is None:
        print(f"resuming {run_dir}: no epoch had finished, so it starts from the beginning")
        return
    try:
        trainer.restore(checkpoint)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise UserError(f"{run_dir / CHECKPOINT} does not fit this run or this version of the code "
                        f"({type(error).__name__}: {error}); start the run again with --overwrite") from None
    print(f"resuming {run_dir} {_position(trainer)}")
    threads = checkpoint.get("cpu_threads", torch.get_num_threads())
    if trainer.device.type == "cpu" and threads != torch.get_num_threads():
        print(f"{prog}: warning: the run used {threads} CPU threads and now has "
              f"{torch.get_num_threads()}: its numbers may differ in the last digits from an "
              f"uninterrupted run (set OMP_NUM_THREADS={threads} to match)", file=sys.stderr)


def run(script: Script, config: Config, options: RunOptions) -> int:
    run_dir = open_run_dir(options)
    checkpoint = load_checkpoint(run_dir, config) if options.resume else None
    if not options.resume:
        write_text(run_dir / "config.yaml", config_yaml(config, {"script": script.prog, **options.as_dict()}))
    device = torch.device(options.device)
    set_seed(config.seed)
    data = script.make_data(config, load_splits(config.dataset, options.data_root, config.seed).to(device))
    model = build_model(config, data.input_shape, data.num_classes).to(device)
    add_fixed_feedback(config, model, data.input_shape, data.num_classes)
    trainer = Trainer(config, model, script.make_task(config, data.num_classes), RULES[config.method],
                      Loaders(data.train, data.val, data.test), run_dir)
    if options.resume:
        resume(trainer, checkpoint, script.prog)
    (run_dir / RESULTS).unlink(missing_ok=True)  # the run is in progress again
    identity = {"seed": config.seed, "method": config.method, "dataset": config.dataset,
                "config": str(options.yaml) if options.yaml else None,
                "epochs_planned": config.epochs, **provenance(device)}
    try:
        results = trainer.fit()
    except Diverged as error:
        write_json(run_dir / RESULTS, {"status": "diverged", "diverged": error.what,
                                       "diverged_at_step": error.step,
                                       "diverged_in_epoch": trainer.progress.epoch + 1,
                                       **trainer.best_so_far(), **identity})
        kept = (f"the best model so far (epoch {trainer.best['epoch']}) is kept in {run_dir}"
                if trainer.best else "no epoch had finished, so there is no model to keep")
        print(f"{script.prog}: error: training diverged: {error} (epoch {trainer.progress.epoch + 1}); "
              f"{kept}. Lower the learning rates (--lr_F, --lr_B) or clip the gradients "
              f"(--grad_clip_F, --grad_clip_B).", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as stop:
        print(f"\n{script.prog}: stopped by {stop} {_position(trainer)}; checkpoint saved. "
              f"Resume with:\n  python {script.prog} --resume {run_dir}", file=sys.stderr)
        return 128 + stop.signal_number
    except KeyboardInterrupt:  # a second Ctrl-C does not wait for the step to end
        print(f"\n{script.prog}: stopped at once; resume from the last checkpoint with:\n"
              f"  python {script.prog} --resume {run_dir}", file=sys.stderr)
        return 128 + signal.SIGINT
    results = {**results, **identity}
    write_json(run_dir / RESULTS, results)
    if script.report is not None:
        script.report(model, data, run_dir)
    print(" ".join(f"{k} {v:.4g}" for k, v in results.items() if k.startswith("test_"))
          + f"  (best epoch {results['best_epoch']}, {results['wall_seconds']:.0f}s) -> {run_dir}")
    return 0


def _position(trainer: Trainer) -> str:
    """Where a run stands, in words: 'after epoch 3 of 100' or 'in epoch 4 of 100, after batch 7'."""
    progress, epochs = trainer.progress, trainer.config.epochs
    if progress.batch == 0:
        return f"after epoch {progress.epoch} of {epochs}"
    batches = len(trainer.loaders.train)
    return f"in epoch {progress.epoch + 1} of {epochs}, after batch {progress.batch} of {batches}"
