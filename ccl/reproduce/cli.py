"""`python -m ccl.reproduce run ...` and `python -m ccl.reproduce table ...`."""
from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ccl.cli import DEFAULT_DATA_ROOT, resolve_device
from ccl.config import KEYS, check_value, closest, parse_cli_value, read_yaml_sections
from ccl.reproduce.cluster import EXECUTORS, Cluster, active_job, submit_all
from ccl.reproduce.paper import PROCEDURES, TABLES, configs_of
from ccl.reproduce.runner import Settings, check_unchanged, only_runner, plan_runs, report, run_all
from ccl.reproduce.table import SELECTIONS, check_runs_root, write_grid_tables, write_tables
from ccl.run_dir import PRIMARY_SELECTION
from utils.data.datasets import SOURCE_OF
from utils.data.files import prepare_hint
from utils.data.prepare import is_ready
from utils.errors import ConfigError, UserError
from utils.provenance import REPO_ROOT

DEFAULT_SEEDS = (2023, 2024, 2025, 2026, 2027)  # the released configs' 2023, and the next four
DEFAULT_RUNS_ROOT = Path("runs/reproduce")
PROG = "python -m ccl.reproduce"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", allow_abbrev=False,
        help="train every (config, seed) that has not finished; --KEY VALUE overrides a config key",
        description="Train every (config, seed) without a finished results.json: skip finished "
                    "runs, resume interrupted ones, start the others. Any --KEY VALUE (e.g. "
                    "--epochs 2) overrides that config key in every run and names the run directory.")
    run.add_argument("configs", nargs="*", type=Path, help="config files, e.g. yaml/mlp/mnist_ccl.yaml")
    run.add_argument("--table", nargs="+", choices=list(TABLES), default=[],
                     help="add every config of a row of this paper table (table1: with its DRTP row)")
    run.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                     help=f"default: {' '.join(map(str, DEFAULT_SEEDS))}")
    run.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2,...",
                     help="train every combination of these values of numeric config keys (e.g. "
                          "lr_F=0.1,0.2 lr_B=0,0.1) with every seed; each combination names its run "
                          "directories, as --KEY VALUE does")
    run.add_argument("--jobs", type=int, default=1, help="runs at the same time (default 1)")
    run.add_argument("--devices", nargs="+", default=[None],
                     help="devices given to the runs in turn, e.g. cpu, or cuda:0 cuda:1 "
                          "(default: each entry script's own, cuda if available)")
    run.add_argument("--threads", type=int, default=None,
                     help="CPU threads per run (default: CPU cores / jobs)")
    run.add_argument("--runs_root", type=Path, default=DEFAULT_RUNS_ROOT,
                     help=f"where the run directories go (default {DEFAULT_RUNS_ROOT})")
    run.add_argument("--data_root", type=Path, default=None,
                     help="datasets, see prepare_data.py (default: each entry script's, ./data)")
    run.add_argument("--procedure", choices=PROCEDURES, default="released",
                     help="released (default): as the runs behind the paper's numbers were made (the "
                          "released warm-up counter and CIFAR CNN validation); fixed: this project's "
                          "defaults (docs/FIDELITY.md rows 8 and 14). Named in each run directory")
    run.add_argument("--dry_run", action="store_true", help="list the runs and what would happen")
    cluster = run.add_argument_group(
        "executors", "where the runs go (docs/SCALING.md): local, this machine's pool (--jobs, "
                     "--devices); slurm, one job per run through submitit (the --slurm_* options); "
                     "submitit_local, the same jobs as local processes, for testing and debugging")
    cluster.add_argument("--executor", choices=EXECUTORS, default="local", help="default: local")
    defaults = Cluster()
    cluster.add_argument("--slurm_partition", default=None, help="the partition to submit to (required)")
    cluster.add_argument("--slurm_gpus_per_job", type=int, default=None,
                         help=f"GPUs per run (default {defaults.gpus_per_job}; 0: on the CPU; more than 1: "
                              f"the run trains over that many processes)")
    cluster.add_argument("--slurm_cpus_per_job", type=int, default=None,
                         help=f"CPUs per run (default {defaults.cpus_per_job})")
    cluster.add_argument("--slurm_time", type=int, default=None, metavar="MINUTES",
                         help=f"time limit per job (default {defaults.minutes}); a job stopped by it "
                              f"checkpoints, and the next invocation resumes it")
    cluster.add_argument("--slurm_array_parallelism", type=int, default=None,
                         help=f"jobs of the array running at once (default {defaults.array_parallelism})")
    table = commands.add_parser("table", allow_abbrev=False,
                                help="our mean +- std beside the paper's, as Markdown and CSV",
                                description="Print every paper table (Markdown) with our numbers "
                                            "from the run directories and write one CSV per table.")
    table.add_argument("configs", nargs="*", type=Path,
                       help="with --grid: the configs whose grids to write (default: every config "
                            "with runs that vary the grid keys)")
    table.add_argument("--grid", nargs="+", default=None, metavar="KEY",
                       help="instead of the paper's tables, one CSV per config (and other overrides) "
                            "of the runs that set these keys: one row per combination of their "
                            "values, with mean, std and n of the test metric (the columns "
                            "`python -m ccl.figures grid` reads)")
    table.add_argument("--split", choices=("test", "val"), default="test",
                       help="with --grid: the test metric of the model each run kept (default), or "
                            "its validation metric (val): to choose settings without the test set")
    table.add_argument("--runs_root", type=Path, default=DEFAULT_RUNS_ROOT,
                       help=f"the run directories (default {DEFAULT_RUNS_ROOT})")
    table.add_argument("--select", choices=(*SELECTIONS, "all"), default=PRIMARY_SELECTION,
                       help="whose test metric the tables show: the model with the lowest validation "
                            "loss (val_loss, the released rule; default), the highest validation "
                            "accuracy (val_acc), the last epoch's (last), or all three side by side")
    table.add_argument("--results_dir", type=Path, default=None,
                       help="where the CSV files go (default: <runs_root>/tables; the repository's "
                            "measured tables are in results/, rewritten only when named here)")
    return parser


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Separate the config keys (--lr_F 0.5, --epochs=2) from the runner's own arguments."""
    rest, overrides = [], {}
    words = iter(argv)
    for word in words:
        name, equals, value = word[2:].partition("=") if word.startswith("--") else ("", "", "")
        if name not in KEYS:
            rest.append(word)
            continue
        if name == "seed":
            raise ConfigError("the runner sets each run's seed: use --seeds S1 S2 ...")
        if not equals:
            value = next(words, None)
            if value is None:
                raise ConfigError(f"--{name} needs a value")
        overrides[name] = parse_cli_value(name, value)
    return rest, overrides


def grid_combinations(words: Sequence[str], overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the values of `--grid KEY=V1,V2 ...`, in the order given (the last
    key varies fastest); [{}] without a grid."""
    axes: dict[str, list[Any]] = {}
    for word in words:
        name, equals, values = word.partition("=")
        if name not in KEYS:
            raise ConfigError(f"--grid {word}: {name!r} is not a config key{closest(name, KEYS)}")
        if name == "seed":
            raise ConfigError("--grid seed: the runner sets each run's seed: use --seeds S1 S2 ...")
        if KEYS[name].type not in (int, float) or KEYS[name].choices:
            raise ConfigError(f"--grid {name}: a grid varies numeric keys; {name} takes "
                              f"{', '.join(map(str, KEYS[name].choices)) or 'a string'}")
        if name in axes or name in overrides:
            raise ConfigError(f"--grid {name}: the key is set twice; give it once, in --grid or as --{name}")
        if not equals or not values:
            raise ConfigError(f"--grid {word}: give the key's values as {name}=V1,V2,...")
        axes[name] = list(dict.fromkeys(grid_value(name, text) for text in values.split(",")))
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def grid_value(name: str, text: str) -> Any:
    kind = "an integer" if KEYS[name].type is int else "a number"
    try:
        value = parse_cli_value(name, text.strip())
    except ConfigError:
        raise ConfigError(f"--grid {name}: {text!r} is not {kind}") from None
    check_value(name, value, f"--grid {name}")
    return value


def shown(path: Path) -> Path:
    """The path relative to the working directory where it is inside it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def run_command(args: argparse.Namespace, overrides: dict[str, Any], launcher: Sequence[str]) -> int:
    configs = list(args.configs) + [shown(REPO_ROOT / "yaml" / f"{config}.yaml")
                                    for name in args.table for config in configs_of(name)]
    if not configs:
        raise ConfigError("name config files (e.g. yaml/mlp/mnist_ccl.yaml) or --table")
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--jobs and --threads must be positive")
    for seed in args.seeds:  # every run would reject it
        check_value("seed", seed, "--seeds")
    cluster = cluster_of(args)
    devices = [None if device is None else resolve_device(device, "--devices") for device in args.devices]
    # seed by seed: a run stopped halfway has one seed of every setting rather than all of a few
    runs = list(dict.fromkeys(
        run for seed in args.seeds for combination in grid_combinations(args.grid, overrides)
        for run in plan_runs(configs, [seed], {**overrides, **combination}, args.runs_root,
                             args.procedure)))
    check_unchanged(runs)
    settings = Settings(jobs=args.jobs, devices=devices,
                        threads=args.threads or max(1, (os.cpu_count() or 1) // args.jobs),
                        data_root=args.data_root, launcher=tuple(launcher))
    if args.dry_run:
        dry_run(runs, settings if cluster is None else cluster.settings(settings))
        return 0
    with only_runner(args.runs_root):
        if cluster is not None:
            return submit_all(runs, settings, cluster, args.runs_root)
        queued = {run: job for run in runs if (job := active_job(run)) is not None}
        for run, (record, state) in queued.items():
            print(f"queued   {run.run_dir}: {record['executor']} job {record['job_id']} is {state}; left to it")
        outcomes, stopped_by = run_all([run for run in runs if run not in queued], settings)
    print(report(outcomes, stopped_by))
    print(f"tables: {tables_command(args)}")
    if stopped_by is not None:
        return 128 + stopped_by
    return 0 if all(outcome.status == "finished" for outcome in outcomes) else 1


def tables_command(args: argparse.Namespace) -> str:
    """The command that tabulates the runs of `run`: a grid's CSV tables, or the paper's."""
    if args.grid:
        keys = [word.partition("=")[0] for word in args.grid]
        return shlex.join([*PROG.split(), "table", *map(str, args.configs), "--grid", *keys,
                           "--runs_root", str(args.runs_root)])
    return shlex.join([*PROG.split(), "table", "--runs_root", str(args.runs_root)])


def cluster_of(args: argparse.Namespace) -> Cluster | None:
    """The cluster settings of the command line (None: the local pool), checked."""
    given = {name: getattr(args, f"slurm_{flag}") for name, flag in (
        ("partition", "partition"), ("gpus_per_job", "gpus_per_job"), ("cpus_per_job", "cpus_per_job"),
        ("minutes", "time"), ("array_parallelism", "array_parallelism"))}
    given = {name: value for name, value in given.items() if value is not None}
    if args.executor == "local":
        if given:
            raise ConfigError("the --slurm_* options apply to --executor slurm (or submitit_local)")
        return None
    if args.jobs != 1 or args.devices != [None] or args.threads is not None:
        raise ConfigError(f"--jobs, --devices and --threads apply to --executor local; with "
                          f"--executor {args.executor} each run is a job of --slurm_gpus_per_job GPUs "
                          f"and --slurm_cpus_per_job CPUs")
    cluster = Cluster(args.executor, **given)
    cluster.check()
    return cluster


def dry_run(runs, settings: Settings) -> None:
    """Each run's state (or its live job) and the command that would train it; then, on
    stderr (stdout stays one line per run), how many there are and the datasets that are not
    ready under the data root."""
    states = []
    for index, run in enumerate(runs):
        device = settings.devices[index % len(settings.devices)]
        job = active_job(run)
        states.append(run.state() if job is None else f"job {job[0]['job_id']} {job[1]}")
        print(f"{states[-1]:12} {shlex.join(settings.command(run, device))}")
    root = settings.data_root or DEFAULT_DATA_ROOT
    for dataset in unprepared_datasets(runs, root):
        print(f"warning: {dataset} is not prepared under {root}: its runs would fail; run "
              f"`{prepare_hint(dataset, root)}`", file=sys.stderr)
    print(f"{len(runs)} runs from {len({run.config for run in runs})} configs, "
          f"{states.count('finished')} finished", file=sys.stderr)


def unprepared_datasets(runs, root: Path) -> list[str]:
    """The datasets (as prepare_data.py names them) that runs read and `root` does not hold."""
    needed = {SOURCE_OF[dict(run.overrides).get("dataset") or read_yaml_sections(run.config)["dataset"]]
              for run in runs if run.state() != "finished"}
    return [dataset for dataset in sorted(needed) if not is_ready(dataset, root)]


def grid_command(args: argparse.Namespace, results_dir: Path) -> int:
    for name in args.grid:
        if name not in KEYS:
            raise ConfigError(f"--grid {name}: not a config key{closest(name, KEYS)}")
        if KEYS[name].type not in (int, float) or KEYS[name].choices:  # as `run --grid` takes them
            raise ConfigError(f"--grid {name}: a grid varies numeric keys; {name} takes "
                              f"{', '.join(map(str, KEYS[name].choices)) or 'a string'}. Runs of other "
                              f"{name} values are configs of their own, side by side in `{PROG} table`")
    check_runs_root(args.runs_root)
    configs = [f"{Path(config).parent.name}/{Path(config).stem}" for config in args.configs]
    for path in write_grid_tables(args.runs_root, args.grid, configs, results_dir, args.split):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None, launcher: Sequence[str] = (sys.executable,)) -> int:
    """Exit code: 0 when every requested run has finished, 1 when one failed or diverged, 2 for
    a bad command line, 128 + signal when stopped. `launcher` runs an entry script (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, overrides = split_overrides(argv)
        args = build_parser().parse_args(rest)
        if args.command == "run":
            return run_command(args, overrides, launcher)
        if overrides:
            raise ConfigError(f"table takes no config keys (got --{next(iter(overrides))})")
        results_dir = args.results_dir or args.runs_root / "tables"
        if args.grid is not None:
            return grid_command(args, results_dir)
        if args.configs:
            raise ConfigError(f"table takes config files with --grid only (got {args.configs[0]})")
        if args.split != "test":
            raise ConfigError("--split applies to the --grid tables; the paper's tables are of the test set")
        print(write_tables(args.runs_root, results_dir, args.select))
        print(f"\nCSV files in {results_dir}/", file=sys.stderr)
        return 0
    except UserError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return error.exit_code

