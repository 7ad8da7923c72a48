"""Our numbers beside the paper's, from the run directories under a runs root.

Runs are grouped by config and overrides (the run directory's parent, e.g. `mnist_ccl` or
`mnist_ccl-epochs=1`); a group gives mean, sample standard deviation (n - 1) and n over its
finished runs, for one model selection (`--select`): the model with the lowest validation loss
(val_loss, the released rule and the default), the highest validation accuracy (val_acc) or the
last epoch's (last); results.json holds the test metrics of each (`selections`; a run from
before they were kept has the val_loss one only, at its top level). The overrides that make a
run follow the released procedure (`paper.released_procedure`) are shown as its procedure, not
as overrides. A row is flagged when |ours - paper| > sqrt(s_ours^2 + s_paper^2), the two
standard deviations combined; with n = 1, s_ours counts as 0.
"""
from __future__ import annotations

import csv
import io
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccl.config import KEYS, read_yaml_sections
from ccl.objectives import Classification
from ccl.reproduce.paper import METHOD_ORDER, PAPER, TABLES, Table, Target, released_procedure, targets_of
from ccl.run_dir import LAST_EPOCH, PRIMARY_SELECTION, RESULTS, Damaged, RunDir
from utils.errors import ConfigError, UserError
from utils.io import write_text
from utils.provenance import REPO_ROOT

# config folder -> the table its runs belong to (configs the paper gives no number for are
# listed there too, without the paper's value)
TABLE_OF_FOLDER = {"mlp": "table1", "cnn": "table3", "cnn_ae": "autoencoder"}
SELECTIONS = (*Classification.selections, LAST_EPOCH)  # the tables are of classification runs
OVERRIDE_START = re.compile(r"-(?=[A-Za-z_]\w*=)")  # "mnist_ccl-epochs=1-lr_F=0.5" -> 3 parts


@dataclass(frozen=True)
class Row:
    config: str            # mlp/mnist_ccl
    procedure: str         # released, fixed, both (they coincide for this config) or custom
    overrides: str         # "" or e.g. "epochs=1 lr_F=0.5", besides the procedure's
    selection: str         # whose model's test metric `values` holds: one of SELECTIONS
    dataset: str
    method: str
    values: tuple[float, ...]  # the finished runs' metric, in the table's unit
    epochs: tuple[int, ...]    # the epoch of each of those runs' selected model
    diverged: int
    wall_seconds: float | None  # mean over finished runs: training and validation, no start-up
    target: Target | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    @property
    def diff(self) -> float | None:
        return None if self.mean is None or self.target is None else self.mean - self.target.mean

    @property
    def combined_std(self) -> float | None:
        if self.target is None or self.mean is None:
            return None
        return math.hypot(self.std or 0.0, self.target.std)

    @property
    def flagged(self) -> bool:
        return self.diff is not None and abs(self.diff) > self.combined_std


def run_results(runs_root: Path) -> Iterator[tuple[str, dict[str, str], dict, dict | None]]:
    """(config, overrides as the directory names them, results.json, the config it was trained
    with: `saved_values`) of every run under runs_root that has ended. A damaged results.json is
    left out with a warning."""
    for path in sorted(Path(runs_root).glob(f"*/*/seed*/{RESULTS}")):
        setting = path.parent.parent
        folder = setting.parent.name
        if folder not in TABLE_OF_FOLDER:
            print(f"note: {setting} is not under a config folder ({', '.join(TABLE_OF_FOLDER)}); "
                  f"left out", file=sys.stderr)
            continue
        try:
            results = RunDir(path.parent).read_results()
        except Damaged as error:
            print(f"warning: {error}; that run is left out", file=sys.stderr)
            continue
        stem, *overrides = OVERRIDE_START.split(setting.name)
        yield f"{folder}/{stem}", dict(o.split("=", 1) for o in overrides), results, saved_values(path.parent)


def saved_values(run_dir: Path) -> dict[str, Any] | None:
    """The config a run was trained with (its config.yaml), but its seed; None without one."""
    try:
        config, _ = RunDir(run_dir).saved_config()
    except (UserError, OSError):
        return None
    return {name: getattr(config, name) for name in KEYS if name != "seed"}


def by_saved_config(name: str, runs: Sequence[tuple[Any, dict | None]]) -> dict[tuple[tuple[str, str], ...], list]:
    """The items of the runs of one name, grouped by the config each was trained with: {(): all}
    when they share one (a config file edited between runs does not share it); else by the
    values of the keys where the configs differ, e.g. {(("method", "BP"),): [...], ...}, said on
    stderr. A run without a readable config.yaml counts as its own config."""
    configs = []
    for _, saved in runs:
        if saved not in configs:
            configs.append(saved)
    if len(configs) < 2:
        return {(): [item for item, _ in runs]}
    known = [config for config in configs if config is not None]
    differing = [key for key in known[0] if len({repr(config[key]) for config in known}) > 1]
    print(f"note: the runs of {name} were trained with {len(configs)} different configs (differing in "
          f"{', '.join(differing) or 'config.yaml: missing in some'}); each config is shown on its own",
          file=sys.stderr)
    groups = defaultdict(list)
    for item, saved in runs:
        label = ((("config.yaml", "missing"),) if saved is None else
                 tuple((key, value_text(saved[key])) for key in differing))
        groups[label].append(item)
    return groups


def value_text(value: Any) -> str:
    """A value as labels and CSV cells show it: a float in the shortest text that reads back
    as the same float (distinct values stay distinct), without a trailing '.0'."""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def collect(runs_root: Path) -> dict[tuple[str, str, str], list[dict]]:
    """results.json of every run under runs_root, by (config, procedure, other overrides); the
    runs of one name trained with different configs (config.yaml) as separate groups, the keys
    that tell them apart added to their overrides."""
    named = defaultdict(list)
    for config, overrides, results, saved in run_results(runs_root):
        named[(config, *procedure_of(config, overrides))].append((results, saved))
    groups = {}
    for (config, procedure, others), runs in named.items():
        name = f"{config} ({others})" if others else config
        for label, results in by_saved_config(name, runs).items():
            text = " ".join(f"{key}={value}" for key, value in label)
            groups[(config, procedure, " ".join(filter(None, (others, text))))] = results
    return groups


def check_runs_root(runs_root: Path) -> None:
    if not Path(runs_root).is_dir():
        raise UserError(f"nothing was found under --runs_root {runs_root}: it is not a directory. Give "
                        f"the --runs_root the runs were trained under (`python -m ccl.reproduce run "
                        f"--runs_root DIR`; default runs/reproduce)")


def procedure_of(config: str, overrides: dict[str, str]) -> tuple[str, str]:
    """(procedure, the other overrides as text) of a run directory's overrides."""
    path = REPO_ROOT / "yaml" / f"{config}.yaml"
    values = {**(read_yaml_sections(path) if path.is_file() else {}), **overrides}
    procedure = {k: str(v) for k, v in released_procedure(values, config.split("/")[0]).items()}
    if not procedure:
        kind = "both"
    elif all(overrides.get(k) == v for k, v in procedure.items()):
        kind, overrides = "released", {k: v for k, v in overrides.items() if k not in procedure}
    else:
        kind = "fixed" if not procedure.keys() & overrides.keys() else "custom"
    return kind, " ".join(f"{k}={v}" for k, v in overrides.items())


def selected(results: dict, selection: str, metric: str) -> tuple[float, int] | None:
    """(test metric, epoch) of a finished run's model chosen by `selection` (None if not kept)."""
    if "selections" not in results:  # written before the selections were kept
        return (results[f"test_{metric}"], results["best_epoch"]) if selection == PRIMARY_SELECTION else None
    chosen = results["selections"].get(selection)
    return None if chosen is None else (chosen[f"test_{metric}"], chosen["epoch"])


def make_row(config: str, procedure: str, overrides: str, results: Sequence[dict], table: Table,
             target: Target | None, selection: str = PRIMARY_SELECTION) -> Row:
    finished = [r for r in results if r["status"] == "finished"]
    first = results[0] if results else {}
    if target is not None and first.get("method", target.method) != target.method:
        target = None  # a config edited to another rule: not the paper's row
    chosen = [pair for pair in (selected(r, selection, table.metric) for r in finished) if pair is not None]
    return Row(config, procedure, overrides, selection,
               dataset=target.dataset if target else first.get("dataset", "?"),
               method=first.get("method") or (target.method if target else "?"),
               values=tuple(value * table.scale for value, _ in chosen),
               epochs=tuple(epoch for _, epoch in chosen),
               diverged=sum(r["status"] == "diverged" for r in results),
               wall_seconds=statistics.fmean(r["wall_seconds"] for r in finished) if finished else None,
               target=target)


PROCEDURE_ORDER = {"both": 0, "released": 0, "fixed": 1, "custom": 2}


def table_rows(table: Table, groups: dict[tuple[str, str, str], list[dict]],
               selection: str = PRIMARY_SELECTION) -> list[Row]:
    """The paper's rows in its order, each as the released procedure ran it ('no runs' where
    nothing ran), then its other procedures and overridden variants; then the folder's configs
    without a paper number."""
    rows = []
    targets = {target.config: target for target in targets_of(table.name)}
    for config, target in targets.items():
        paper_setting = (config, "both" if procedure_of(config, {})[0] == "both" else "released", "")
        others = sorted((key for key in groups if key[0] == config and key != paper_setting),
                        key=lambda key: (PROCEDURE_ORDER[key[1]], key[2]))
        variants = [paper_setting, *others]
        rows += [make_row(*key, groups.get(key, []), table, target, selection) for key in variants]
    rows += [make_row(*key, results, table, None, selection) for key, results in sorted(groups.items())
             if key[0] not in targets and TABLE_OF_FOLDER[key[0].split("/")[0]] == table.name]
    return sorted(rows, key=_reading_order)


def _reading_order(row: Row) -> tuple:
    """By dataset, then method in the paper's order of rows (other configs last);
    sorted() keeps the order within a config (its procedures and variants)."""
    datasets = list(dict.fromkeys(target.dataset for target in PAPER))
    return (datasets.index(row.dataset) if row.dataset in datasets else len(datasets),
            METHOD_ORDER.index(row.method) if row.method in METHOD_ORDER else len(METHOD_ORDER))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def markdown(table: Table, rows: Sequence[Row]) -> str:
    lines = [f"### {table.title}, model selection {rows[0].selection if rows else PRIMARY_SELECTION}", "",
             "| dataset | method | config | procedure | ours: mean +- std (n) | paper | diff | flag | wall time / run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        diff = f"{row.diff:+.{table.decimals}f}" if row.diff is not None else ""
        lines.append(f"| {row.dataset} | {row.method} | {_setting(row)} | {row.procedure} | "
                     f"{_ours(table, row)} | {_paper(table, row)} | {diff} | "
                     f"{'yes' if row.flagged else ''} | {duration(row.wall_seconds)} |")
    return "\n".join(lines)


def markdown_side_by_side(table: Table, rows_of: dict[str, Sequence[Row]]) -> str:
    """One table with every selection's mean +- std (n) side by side."""
    names = list(rows_of)
    lines = [f"### {table.title}, by model selection", "",
             "| dataset | method | config | procedure | " + " | ".join(names) + " | paper |",
             "|---|---|---|---|" + "---|" * (len(names) + 1)]
    for same in zip(*rows_of.values()):
        row = same[0]
        lines.append(f"| {row.dataset} | {row.method} | {_setting(row)} | {row.procedure} | "
                     + " | ".join(_ours(table, r, with_epochs=True) for r in same)
                     + f" | {_paper(table, row)} |")
    return "\n".join(lines)


def _number(table: Table, value: float | None) -> str:
    return "" if value is None else f"{value:.{table.decimals}f}"


def _ours(table: Table, row: Row, with_epochs: bool = False) -> str:
    if row.n == 0 and not row.diverged:
        return "no runs"
    parts = [_number(table, row.mean)] if row.n else []
    if row.std is not None:
        parts.append(f"+- {_number(table, row.std)}")
    notes = [f"n={row.n}"] + ([f"{row.diverged} diverged"] if row.diverged else [])
    if with_epochs and row.epochs:
        low, high = min(row.epochs), max(row.epochs)
        notes.append(f"epoch {low}" if low == high else f"epochs {low}-{high}")
    return " ".join([*parts, f"({', '.join(notes)})"])


def _paper(table: Table, row: Row) -> str:
    if row.target is None:
        return "-"
    note = f" ({row.target.note})" if row.target.note else ""
    return f"{_number(table, row.target.mean)} +- {_number(table, row.target.std)}{note}"


def _setting(row: Row) -> str:
    return f"{row.config} ({row.overrides})" if row.overrides else row.config


CSV_COLUMNS = ("table", "dataset", "method", "config", "procedure", "overrides", "selection", "n",
               "diverged", "ours_mean",
               "ours_std", "paper_mean", "paper_std", "diff", "combined_std", "flag",
               "mean_wall_seconds")


def csv_text(table: Table, rows: Sequence[Row]) -> str:
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        paper = (row.target.mean, row.target.std) if row.target else (None, None)
        cells = (table.name, row.dataset, row.method, row.config, row.procedure, row.overrides,
                 row.selection, row.n, row.diverged,
                 row.mean, row.std, *paper, row.diff, row.combined_std, int(row.flagged),
                 row.wall_seconds)
        writer.writerow(["" if c is None else round(c, 6) if isinstance(c, float) else c for c in cells])
    return stream.getvalue()


FOOTNOTE = ("ours: mean +- sample std (n - 1) over n finished runs (seeds). flag: |ours - paper| > "
            "sqrt(s_ours^2 + s_paper^2), with s_ours = 0 when n = 1. procedure: released (as the runs "
            "behind the paper's numbers were made), fixed (this project's defaults, docs/FIDELITY.md "
            "rows 8 and 14), both (the two coincide for that config). model selection: the test "
            "metric of the model with the lowest validation loss (val_loss, the released rule), the "
            "highest validation accuracy (val_acc) or of the last epoch (last); a run from before "
            "the selections were kept counts for val_loss only. A config followed by "
            "(key=value) ran with those overrides (e.g. fewer epochs) and is not the paper's setting. "
            "wall time: the mean `wall_seconds` of results.json (training and validation, over "
            "every resume; not process start-up, data loading or the test). The paper's FA and "
            "DFA-or-DTP rows (its second baseline row's label is uncertain) come from its cited "
            "sources, with their own code, networks and model selection; our FA, DFA and DRTP rows "
            "are runs of this project, on the same networks, seeds and epochs as BP and CCL.")


def write_tables(runs_root: Path, results_dir: Path, select: str = PRIMARY_SELECTION) -> str:
    """Markdown of every table (returned) and one CSV per table in results_dir, for the model
    selection `select`, or for each of them side by side (`all`)."""
    check_runs_root(runs_root)
    groups = collect(runs_root)
    if not groups:
        raise UserError(f"nothing was found under --runs_root {runs_root}: no run there has ended (a "
                        f"<config folder>/<config name>/seed<S>/results.json). Give the --runs_root the "
                        f"runs were trained under, or train them with `python -m ccl.reproduce run`")
    parts = []
    for table in TABLES.values():
        names = SELECTIONS if select == "all" else (select,)
        rows_of = {name: table_rows(table, groups, name) for name in names}
        write_text(Path(results_dir) / f"{table.name}.csv",
                   csv_text(table, [row for rows in rows_of.values() for row in rows]))
        parts.append(markdown_side_by_side(table, rows_of) if select == "all"
                     else markdown(table, rows_of[select]))
    parts.append(FOOTNOTE)
    return "\n\n".join(parts)


# --- grids (python -m ccl.reproduce table --grid lr_F lr_B) ----------------------------------
GRID_STATISTICS = ("mean", "std", "n", "diverged")


def grid_cells(runs_root: Path, keys: Sequence[str], configs: Sequence[str]
               ) -> dict[tuple[str, str], dict[tuple[float, ...], list[dict]]]:
    """The ended runs whose directories set every grid key, by (config, the other overrides as
    text) and then by the keys' values. `configs` (e.g. mlp/mnist_ccl) limits the configs."""
    named = defaultdict(list)
    for config, overrides, results, saved in run_results(runs_root):
        if (configs and config not in configs) or not all(key in overrides for key in keys):
            continue
        others = "".join(f"-{k}={v}" for k, v in sorted(overrides.items()) if k not in keys)
        fixed = None if saved is None else {k: v for k, v in saved.items() if k not in keys}
        named[(config, others)].append(((tuple(float(overrides[key]) for key in keys), results), fixed))
    grids = defaultdict(lambda: defaultdict(list))
    for (config, others), runs in named.items():
        # a grid whose config was edited between its runs is two grids
        for label, cells in by_saved_config(config + others, runs).items():
            for values, results in cells:
                grids[(config, others + "".join(f"-{k}={v}" for k, v in label))][values].append(results)
    return grids


def grid_csv(keys: Sequence[str], cells: dict[tuple[float, ...], list[dict]], table: Table,
             split: str = "test") -> str:
    """One row per cell: the keys' values, then mean, sample std (empty when n < 2) and n of the
    finished runs' metric in the table's unit (accuracy in %), and the diverged runs. The metric
    is the test metric of the model each run kept, or (`split` val) that model's validation
    metric: what a choice of settings may look at without touching the test set."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([*keys, *GRID_STATISTICS])
    for values in sorted(cells):
        runs = cells[values]
        metric = [r[f"{split}_{table.metric}"] * table.scale for r in runs if r["status"] == "finished"]
        # 4 decimals: the accuracies are float32 fractions, their last digits are noise
        mean = round(statistics.fmean(metric), 4) if metric else ""
        std = round(statistics.stdev(metric), 4) if len(metric) >= 2 else ""
        writer.writerow([*map(value_text, values), mean, std, len(metric),
                         sum(r["status"] == "diverged" for r in runs)])
    return stream.getvalue()


def write_grid_tables(runs_root: Path, keys: Sequence[str], configs: Sequence[str],
                      results_dir: Path, split: str = "test") -> list[Path]:
    """One CSV per (config, other overrides) of the runs that set the grid keys:
    `grid_<keys>_<folder>_<config name><-other overrides>[-val].csv` in results_dir (-val: of
    the validation metric)."""
    grids = grid_cells(runs_root, keys, configs)
    if not grids:
        scope = f" of {', '.join(configs)}" if configs else ""
        raise ConfigError(f"no run{scope} under {runs_root} sets {' and '.join(keys)} in its directory "
                          f"name; train the grid first with `python -m ccl.reproduce run CONFIG --grid "
                          f"{' '.join(k + '=V1,V2' for k in keys)}`")
    written = []
    for (config, others), cells in sorted(grids.items()):
        folder, stem = config.split("/")
        suffix = "" if split == "test" else f"-{split}"
        path = Path(results_dir) / f"grid_{'_'.join(keys)}_{folder}_{stem}{others}{suffix}.csv"
        write_text(path, grid_csv(keys, cells, TABLES[TABLE_OF_FOLDER[folder]], split))
        written.append(path)
    return written
