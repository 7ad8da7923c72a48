"""From a command line to a finished run: what the three entry scripts share.

An entry script's declaration (a `Script`, in ccl/scripts.py) says which task, architectures and
datasets it accepts, how it batches data and which objective it trains. `main(script)` parses
the command line, takes the run directory, `build`s the experiment and trains it. The
benchmark builds its cases with the same `build`.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ccl import loggers
from ccl.acceleration import check_supported
from ccl.cli import RunOptions, parse_command_line
from ccl.config import KEYS, Config, config_yaml, ignored_settings
from ccl.distributed import ONE_PROCESS, Relayed, World
from ccl.distributed.batchnorm import synchronise_batch_norm
from ccl.rules import RULES, Rule, add_fixed_state
from ccl.run_dir import CHECKPOINT, DIVERGED, FINISHED, Damaged, ReadOnlyRunDir, RunDir, RunDirError
from ccl.target_prop import FeedbackPhase
from ccl.trainer import Diverged, Interrupted, Trainer
from models import build_model
from models.network import DualNetwork
from utils.data import SOURCE_OF, SOURCES, Splits, load_splits
from utils.data.recipes import Data
from utils.errors import ConfigError, UserError
from utils.io import WriteError
from utils.provenance import provenance
from utils.seed import deterministic_kernels, is_nondeterminism_error, set_seed

EXIT_DIVERGED = 3


@dataclass(frozen=True)
class Script:
    prog: str
    description: str
    task: str
    architectures: tuple[str, ...]
    datasets: tuple[str, ...]
    make_data: Callable[[Config, Splits], Data]
    make_objective: Callable[[Config, int, World], Any]  # (config, classes, the run's processes)
    methods: tuple[str, ...] = tuple(RULES)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Config], None] = lambda config: None
    ignored: tuple[str, ...] = ()  # keys the script never reads (a value not their default is warned about)
    # called with (model holding the best weights, data, run directory) once a run is tested
    report: Callable[[torch.nn.Module, Data, Path], None] | None = None

    def default(self, name: str) -> Any:
        """The value a key takes when a config leaves it out."""
        return self.defaults.get(name, KEYS[name].default)

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
        rule = RULES[config.method]
        if rule.check is not None:
            rule.check(config)
        self.check(config)

    def warnings(self, config: Config) -> list[str]:
        """Settings the run ignores, as the released script does: one line each."""
        notes = [f"{name} {getattr(config, name)!r} is ignored: {self.prog} does not use it"
                 for name in self.ignored if getattr(config, name) != self.default(name)]
        if self.task == "classification" and config.task_transform not in (None, "none"):
            notes.append(f"task_transform {config.task_transform!r} is ignored: it applies to the "
                         f"autoencoder (main_ae.py) only")
        return notes + ignored_settings(config, unread=self.ignored)


@dataclass
class Experiment:
    """A config made ready to train: its batches, network, objective and learning rule."""

    config: Config
    data: Data
    model: DualNetwork
    objective: Any
    rule: Rule
    world: World = ONE_PROCESS  # the processes that train it together
    feedback_phase: FeedbackPhase | None = None  # the rule's own training of the feedback network (TP)


def build(script: Script, config: Config, device, world: World = ONE_PROCESS, *,
          data_root: Path | None = None, splits: Splits | None = None) -> Experiment:
    """The data, model and objective of `config` on `device`, the model initialised from the
    config's seed, as rank `world.rank` of `world.size` trains it (its terms that couple the
    samples of a batch reading the global batch). The data is the config's dataset under
    `data_root`, split by the config's seed, unless `splits` are given (the benchmark's
    synthetic images). Every run, and every case of the benchmark, is built here."""
    if splits is None:
        splits = load_splits(config.dataset, data_root, config.seed).to(device)
    set_seed(config.seed)
    data = script.make_data(config, splits)
    model = build_model(config, data.input_shape, data.num_classes).to(device)
    rule = RULES[config.method]
    add_fixed_state(rule, model, data.input_shape, data.num_classes, config.seed)
    objective = script.make_objective(config, data.num_classes, world)
    synchronise_batch_norm(model, world, feedback=objective.feedback_reads_batch)
    phase = rule.feedback_phase(config, model, world) if rule.feedback_phase else None
    return Experiment(config, data, model, objective, rule, world, phase)


def main(script: Script, argv: Sequence[str] | None = None) -> int:
    """Parse the command line, train, test; returns the process exit code. Started by torchrun,
    this process is one rank of the run (ccl/distributed): rank 0 prints and writes, the others
    print only their own errors."""
    world = World.from_environment()
    rank = f"rank {world.rank}: " if world.size > 1 else ""
    try:
        config, options = parse_command_line(argv, script.prog, script.description,
                                             {"task": script.task, **script.defaults})
        script.validate(config)
        check_supported(config, options.device)
        loggers.check_available(options.loggers)
        world.check(config, uses_fused_pair_loss="fused_pair_loss" not in script.ignored
                    and "fused_pair_loss" in RULES[config.method].reads)
        device = world.device(options.device)
        notes = script.warnings(config)
        if options.dist_backend and world.size == 1:
            notes.append(f"--dist_backend {options.dist_backend} is ignored: this run has one process "
                         f"(start several with torchrun)")
        for note in notes if world.is_main else ():
            print(f"{script.prog}: warning: {note}", file=sys.stderr)
        with world.joined(device, options.dist_backend), _quiet_unless(world.is_main):
            return run(script, config, options, world)
    except Relayed as error:  # rank 0 has said why
        return error.exit_code
    except UserError as error:
        print(f"{script.prog}: error: {rank}{error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the training loop started
        print(f"\n{script.prog}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except RuntimeError as error:
        if not world.lost_rank(error):
            raise
        print(f"{script.prog}: error: {rank}lost another process of the run "
              f"({str(error).splitlines()[0]}); torchrun names the one that failed. Continue the run "
              f"from its last checkpoint with the same torchrun command and --resume RUN_DIR",
              file=sys.stderr)
        return 1


@contextlib.contextmanager
def _quiet_unless(speaking: bool):
    """The ranks other than 0 train silently: rank 0 reports the run's progress and outcome.
    What they raise still reaches their stderr (printed once the block has ended)."""
    if speaking:
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere), \
            contextlib.redirect_stderr(nowhere):
        yield


def run(script: Script, config: Config, options: RunOptions, world: World = ONE_PROCESS) -> int:
    run_dir = RunDir(options.out_dir) if world.is_main else ReadOnlyRunDir(options.out_dir)
    created = _missing(run_dir.path)
    with contextlib.ExitStack() as held:
        # rank 0 alone takes the lock: its refusal (a busy directory) is every rank's error
        world.on_main(lambda: _enter(held, run_dir.locked()))
        repeated, checkpoint = world.on_main(lambda: _prepare(script, config, options, run_dir))
        if repeated is not None:
            return repeated
        try:
            return train(script, config, options, run_dir, checkpoint, world)
        except Exception:  # a failure (a stopped run has returned, a checkpoint saved)
            if not options.resume and world.is_main and not run_dir.has_progress():
                run_dir.discard(created)  # a start that failed before its first epoch leaves nothing
            raise


def _enter(stack: contextlib.ExitStack, context) -> None:
    stack.enter_context(context)


def _missing(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _prepare(script: Script, config: Config, options: RunOptions, run_dir: RunDir
             ) -> tuple[int | None, dict | None]:
    """(the exit code of a run that has already ended, or None; the checkpoint to resume from)."""
    if options.resume:
        try:
            results = run_dir.read_results()
        except Damaged:  # the run continues from its checkpoint and writes them again
            results = None
        if results is not None:  # nothing to continue: testing it again would rewrite its results
            return _repeated(script, run_dir, results, resumed=True), None
        return None, run_dir.load_checkpoint(config)
    return start_afresh(script, config, options, run_dir), None


def start_afresh(script: Script, config: Config, options: RunOptions, run_dir: RunDir) -> int | None:
    """Make the (locked) run directory ready for a new run and write its config. A command that
    repeats a run which has ended trains nothing: its outcome is printed and its exit code
    returned."""
    if not run_dir.is_empty():
        if options.overwrite or not run_dir.has_progress():
            run_dir.clear()  # refused unless it is a run directory holding only our files
        elif not _same_run(run_dir, script, config):
            raise RunDirError(f"run directory {run_dir} holds another run: pass --overwrite to "
                              f"replace it, or choose another --out_dir")
        elif (results := run_dir.read_results()) is not None:
            return _repeated(script, run_dir, results)
        else:
            raise RunDirError(f"run directory {run_dir} holds this run, stopped before it finished: "
                              f"continue it with `python {script.prog} --resume {run_dir}`, or pass "
                              f"--overwrite to start it again")
    run_dir.write_config(config_yaml(config, {"script": script.prog, **options.as_dict()}))
    return None


def _same_run(run_dir: RunDir, script: Script, config: Config) -> bool:
    saved, run = run_dir.project_run_config()
    return saved == config and run.get("script") == script.prog


def _repeated(script: Script, run_dir: RunDir, results: dict, resumed: bool = False) -> int:
    again = ("start it again with --yaml, --out_dir and --overwrite" if resumed
             else "pass --overwrite")  # --resume takes no --overwrite
    if results["status"] == FINISHED:
        print(result_line(results, run_dir))
        print(f"{script.prog}: this run had already finished{': nothing to resume' if resumed else ''}; "
              f"{again} to train it again")
        return 0
    print(f"{script.prog}: this run diverged ({results.get('diverged')} at step "
          f"{results.get('diverged_at_step')}); its results are in {run_dir}. To train it again, "
          f"{again}, with lower learning rates for another outcome", file=sys.stderr)
    return EXIT_DIVERGED


def result_line(results: dict, run_dir: RunDir) -> str:
    return (" ".join(f"{k} {v:.4g}" for k, v in results.items() if k.startswith("test_"))
            + f"  (best epoch {results['best_epoch']}, {results['wall_seconds']:.0f}s) -> {run_dir}")


def train(script: Script, config: Config, options: RunOptions, run_dir: RunDir,
          checkpoint: dict | None, world: World = ONE_PROCESS) -> int:
    logged = options.loggers if world.is_main else ()  # rank 0 alone reports, as it alone writes
    with deterministic_kernels(config.deterministic), \
            loggers.opened(logged, run_dir, config, options.run_id,
                           options.wandb_project, options.wandb_entity) as run_loggers:
        try:
            return _train(script, config, options, run_dir, checkpoint, world, run_loggers)
        except RuntimeError as error:
            if not (config.deterministic and is_nondeterminism_error(error)):
                raise
            raise ConfigError(f"deterministic 1: {str(error).splitlines()[0]} Set deterministic: 0 "
                              f"to train with it (the run is then reproducible on the CPU only)") from None


def _train(script: Script, config: Config, options: RunOptions, run_dir: RunDir,
           checkpoint: dict | None, world: World, run_loggers: loggers.Loggers) -> int:
    device = torch.device(world.device(options.device))
    experiment = build(script, config, device, world, data_root=options.data_root)
    trainer = Trainer(experiment, run_dir, loggers=run_loggers)
    if options.resume:
        resume(trainer, checkpoint, script.prog)
    run_dir.remove_results()  # the run is in progress again
    identity = {"seed": config.seed, "method": config.method, "dataset": config.dataset,
                "config": str(options.yaml) if options.yaml else None,
                "epochs_planned": config.epochs, **provenance(device), **world.describe()}
    try:
        results = trainer.fit()
    except Diverged as error:
        run_dir.write_results({"status": DIVERGED, "diverged": error.what,
                               "diverged_at_step": error.step,
                               "diverged_in_epoch": trainer.progress.epoch + 1,
                               **trainer.best_so_far(), **identity})
        best_epoch = trainer.best_so_far()["best_epoch"]
        kept = (f"the best model so far (epoch {best_epoch}) is kept in {run_dir}"
                if best_epoch else "no epoch had finished, so there is no model to keep")
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
    except WriteError as error:
        then = (f"; then continue the run with:\n  python {script.prog} --resume {run_dir}"
                if (run_dir / CHECKPOINT).is_file() else "")
        raise WriteError(f"{error}{then}") from None
    results = {**results, **identity}
    run_dir.write_results(results)
    run_loggers.results(results)
    if script.report is not None and world.is_main:
        script.report(experiment.model, experiment.data, run_dir.path)
    print(result_line(results, run_dir))
    return 0


def resume(trainer: Trainer, checkpoint: dict | None, prog: str) -> None:
    """Put the trainer where the checkpoint left the run (nowhere to go: start from scratch)."""
    run_dir = trainer.run_dir
    if checkpoint is None:
        print(f"resuming {run_dir}: no epoch had finished, so it starts from the beginning")
        return
    try:
        trainer.restore(checkpoint)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise UserError(f"{run_dir / CHECKPOINT} was written by another version of this code or "
                        f"for another run ({type(error).__name__}: {error}); it is left as it is. "
                        f"Continue with the code that wrote it, or start the run again with "
                        f"--overwrite") from None
    trainer.rewrite_views()
    print(f"resuming {run_dir} {_position(trainer)}")
    processes = checkpoint.get("processes", 1)
    if processes != trainer.world.size:
        print(f"{prog}: warning: the run had {processes} process(es) and now has {trainer.world.size}: "
              f"it trains on the same batches, but its numbers may differ in the last digits from "
              f"an uninterrupted run (the ranks add up in another order)", file=sys.stderr)
    threads = checkpoint.get("cpu_threads", torch.get_num_threads())
    if trainer.device.type == "cpu" and threads != torch.get_num_threads():
        print(f"{prog}: warning: the run used {threads} CPU threads and now has "
              f"{torch.get_num_threads()}: its numbers may differ in the last digits from an "
              f"uninterrupted run (set OMP_NUM_THREADS={threads} to match)", file=sys.stderr)


def _position(trainer: Trainer) -> str:
    """Where a run stands, in words: 'after epoch 3 of 100' or 'in epoch 4 of 100, after batch 7'."""
    progress, epochs = trainer.progress, trainer.config.epochs
    if progress.batch == 0:
        return f"after epoch {progress.epoch} of {epochs}"
    batches = len(trainer.data.train)
    return f"in epoch {progress.epoch + 1} of {epochs}, after batch {progress.batch} of {batches}"
