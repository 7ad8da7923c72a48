"""The run directory: the one place that knows what a run keeps on disk and how it is kept safe.

    config.yaml     the resolved config and how the run was started (written first)
    metrics.jsonl   one line per finished epoch
    checkpoint.pt   everything needed to continue exactly (every epoch, and when stopped)
    best.pt         the weights of the epoch with the lowest validation loss so far (the model
                    a run is tested with, as released)
    best_val_acc.pt the weights of the epoch with the highest validation accuracy so far
    results.json    the outcome: finished (test metrics) or diverged
    analysis.jsonl  analysis_every > 0 or analysis_steps: one record per analysed epoch or step
                    (a view of the checkpoint)
    snapshots/      analysis_snapshots: 1: step<S>.pt, the weights at each analysis_steps step
    .lock           held by the one process that writes the directory; its PID inside

plus what some runs add (`OUTPUTS`). Three rules keep a user's files safe:
- one writer: a process takes the lock for the whole run, and a second one is refused with
  the PID that holds it (the kernel drops the lock of a process that died, so a new run simply
  takes it over);
- a directory is cleared only if it is provably a run directory of this project (its
  config.yaml is a saved run config) holding nothing but files this project writes;
- every write is atomic (utils/io.py), and a temporary file left by an interrupted write is
  removed by the next run that takes the lock.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import yaml
from ccl.config import KEYS, Config, build_config, load_yaml_mapping, section_values
from ccl.objectives import Classification, Reconstruction
from utils.errors import ConfigError, UserError
from utils.io import TEMPORARY_SUFFIX, save_torch, write_json, write_jsonl, write_text

CONFIG, METRICS, CHECKPOINT, BEST, RESULTS = (
    "config.yaml", "metrics.jsonl", "checkpoint.pt", "best.pt", "results.json")
LOCK = ".lock"
RECONSTRUCTIONS = "reconstructions.png"  # autoencoder runs
PRIMARY_SELECTION = "val_loss"  # the model selection of the released code: best.pt
LAST_EPOCH = "last"  # results.json's selections: the last epoch's model, tested beside the best ones
# the weights each model selection keeps (objectives.py: `selections`)
# the best model of each objective's selection: best.pt for the released one, best_<name>.pt else
BEST_OF = {name: BEST if name == PRIMARY_SELECTION else f"best_{name}.pt"
           for objective in (Classification, Reconstruction) for name in objective.selections}
ANALYSIS = "analysis.jsonl"  # analysis_every > 0: one record per analysed epoch
ANALYSIS_KEYS = ("epoch", "layers", "cka", "weight_cosine", "grad_angle_deg")  # of each record
ANALYSIS_OF_BEST = "analysis.json"  # python -m ccl.analysis RUN_DIR
SNAPSHOTS = "snapshots"  # analysis_snapshots: 1: the weights at each analysis_steps step
LOGGER_FOLDERS = ("tensorboard", "wandb")  # --logger tensorboard, --logger wandb
# python -m ccl.figures COMMAND RUN_DIR, when no --out is given
FIGURES = {command: f"{command}.png" for command in ("cka", "alignment", "kernels", "curves", "tsne")}
# every name this project writes into a run directory; nothing else is ever deleted
OUTPUTS = (CONFIG, METRICS, CHECKPOINT, *BEST_OF.values(), RESULTS, RECONSTRUCTIONS, ANALYSIS,
           ANALYSIS_OF_BEST, SNAPSHOTS, *LOGGER_FOLDERS, *FIGURES.values(), LOCK)
FINISHED, DIVERGED = "finished", "diverged"
UNREADABLE = "unreadable"  # RunDir.state: a run directory that no run may touch
READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)  # what a write to a read-only place fails with


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked (exit code 2, nothing is touched)."""


class Damaged(UserError):
    """A file of a run directory that cannot be read back (exit code 1)."""


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: int | None = None

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # --- one writer -------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the directory's lock (creating the directory) until the block ends."""
        self._check_usable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if error.errno in READ_ONLY:
                where = (f"run directory {self.path} is read-only" if self.path.is_dir() else
                         f"cannot create the run directory {self.path}: its parent is read-only")
                raise RunDirError(f"{where} ({error.strerror}); make it writable, or choose another "
                                  f"--out_dir") from None
            raise RunDirError(f"cannot create the run directory {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise RunDirError(f"run directory {self.path} is in use by process {holder}, which is "
                              f"writing it; wait for it to end or stop it, or choose another "
                              f"--out_dir") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        self._lock = descriptor
        try:
            self.remove_stale_temporaries()
            yield self
        finally:
            self._lock = None
            os.close(descriptor)  # releases the lock

    def _check_usable(self) -> None:
        if self.path.is_symlink():
            raise RunDirError(f"--out_dir {self.path} is a symbolic link (to {os.readlink(self.path)}); "
                              f"give the directory itself, or another --out_dir")
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} is a file; choose another --out_dir")

    def holder(self) -> str | None:
        """The PID of the process writing the directory (holding its lock), None when none is.
        The kernel drops the lock of a process that died, so a held lock is a live writer."""
        try:
            descriptor = os.open(self.path / LOCK, os.O_RDONLY)
        except OSError:
            return None
        try:
            # shared and released at once: it tests the writer's exclusive lock without a write
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(descriptor)
        return None

    def remove_stale_temporaries(self) -> None:
        """Temporary files of writes that never finished (a kill, a full disk): with the lock
        held, no write of this directory is in progress."""
        for name in OUTPUTS:
            for temporary in self.path.glob(f".{name}.*{TEMPORARY_SUFFIX}"):
                temporary.unlink(missing_ok=True)

    # --- what the directory holds -----------------------------------------------------------
    def foreign_entries(self) -> list[str]:
        """Entries this project did not write (never deleted)."""
        return sorted(entry.name for entry in self.path.iterdir()
                      if entry.name not in OUTPUTS and not _is_temporary(entry.name))

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(e.name != LOCK for e in self.path.iterdir())

    def has_progress(self) -> bool:
        """Whether anything would be lost by starting again: a finished epoch or an outcome."""
        return any((self.path / name).exists() for name in (CHECKPOINT, BEST, RESULTS))

    def saved_config(self) -> tuple[Config, dict[str, Any]]:
        """The config the run was started with and how it was started (the `run` section)."""
        path = self.path / CONFIG
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {CONFIG}, so it is not a run directory of this project")
        document = load_yaml_mapping(path)
        config = build_config(section_values(document, str(path), extra_sections=("run",)), {}, {},
                              str(path))
        run = document.get("run")
        if not isinstance(run, dict):
            raise RunDirError(f"{path} has no run section, so it was not written by this project")
        return config, run

    def project_run_config(self) -> tuple[Config, dict[str, Any]]:
        """`saved_config()`, or a RunDirError saying the directory is not this project's."""
        try:
            return self.saved_config()
        except ConfigError:
            raise RunDirError(f"{self.path} is not a run directory of this project (it has no "
                              f"{CONFIG} written by a run), so it is left alone: choose another "
                              f"--out_dir") from None

    def clear(self) -> None:
        """Delete what a run wrote, keeping the lock. Refused (nothing deleted) unless the
        directory is provably a run directory of this project holding only its files."""
        assert self._lock is not None, "clear() needs the lock"
        self.project_run_config()
        foreign = self.foreign_entries()
        if foreign:
            raise RunDirError(f"{self.path} holds files this project did not write "
                              f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}), "
                              f"so it is left alone: move them away, or choose another --out_dir")
        for name in OUTPUTS:
            entry = self.path / name
            if name == LOCK or not entry.exists():
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def discard(self, created: Sequence[Path] = ()) -> None:
        """Remove what a run that ended before its first epoch wrote (its config and lock; it kept
        nothing), then the directories in `created` (the run made them) that are empty then:
        nothing another program wrote is removed."""
        assert self._lock is not None, "discard() needs the lock"
        for name in OUTPUTS:  # the lock last: no other run takes the directory meanwhile
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        for directory in created:  # deepest first
            try:
                directory.rmdir()
            except OSError:  # not empty, or not ours to remove
                return

    # --- reading and writing ----------------------------------------------------------------
    def write_config(self, text: str) -> None:
        write_text(self.path / CONFIG, text)

    def write_metrics(self, rows: list[dict]) -> None:
        write_jsonl(self.path / METRICS, rows)

    def write_analysis(self, records: list[dict]) -> None:
        write_jsonl(self.path / ANALYSIS, records)

    def save_snapshot(self, step: int, weights: dict) -> None:
        (self.path / SNAPSHOTS).mkdir(exist_ok=True)
        save_torch(self.snapshot_path(step), weights)

    def snapshot_path(self, step: int) -> Path:
        return self.path / SNAPSHOTS / f"step{step}.pt"

    def save_checkpoint(self, state: dict) -> None:
        save_torch(self.path / CHECKPOINT, state)

    def save_best(self, weights: dict, selection: str = PRIMARY_SELECTION) -> None:
        save_torch(self.path / BEST_OF[selection], weights)

    def write_results(self, results: dict) -> None:
        write_json(self.path / RESULTS, results)

    def remove_results(self) -> None:
        (self.path / RESULTS).unlink(missing_ok=True)

    def read_results(self) -> dict | None:
        """results.json (None when the run has none); a damaged one is a `Damaged` error."""
        path = self.path / RESULTS
        try:
            results = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise Damaged(f"{path} cannot be read ({error})") from None
        problem = _results_problem(results)
        if problem:
            raise Damaged(f"{path} is damaged: {problem}")
        return results

    def state(self) -> str:
        """finished or diverged (results.json), interrupted (a checkpoint), new, or unreadable:
        a results.json that cannot be read and no checkpoint to continue from (a new start would
        delete what the run kept, so nothing may start there). A damaged results.json beside a
        checkpoint counts as interrupted: resuming loses nothing."""
        try:
            try:
                results = self.read_results()
            except Damaged:
                return "interrupted" if (self.path / CHECKPOINT).is_file() else UNREADABLE
            if results is not None:
                return results["status"]
            return "interrupted" if (self.path / CHECKPOINT).is_file() else "new"
        except OSError:  # the directory itself cannot be read
            return UNREADABLE

    def load_checkpoint(self, config: Config) -> dict | None:
        """The run's checkpoint, on the CPU (None before its first epoch ended). It must have
        been written with `config`: an edited config.yaml would silently change the run."""
        state = _load(self.path / CHECKPOINT, "checkpoint", missing_ok=True,
                      fix="the run cannot continue from it: start it again with --overwrite")
        if state is None:
            return None
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise Damaged(f"{self.path / CHECKPOINT} is not a checkpoint of this project")
        changed = {name: (value, getattr(config, name)) for name, value in state["config"].items()
                   if name in KEYS and value != getattr(config, name)}
        if changed:
            edits = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
            raise RunDirError(f"{self.path / CONFIG} was changed after the run started ({edits}); "
                              f"a run keeps its config: undo the change, or start a new run with "
                              f"--yaml and another --out_dir")
        return state

    def load_best(self, device, selection: str = PRIMARY_SELECTION) -> dict:
        """The weights of the best epoch by `selection`, on `device`."""
        path = self.path / BEST_OF[selection]
        if not path.is_file():
            raise RunDirError(f"{self.path} has no {path.name}: its run has not finished an epoch")
        return _load(path, "best model", map_location=device, fix="train the run again with --overwrite")

    def load_best_into(self, model: torch.nn.Module, selection: str = PRIMARY_SELECTION) -> None:
        """Put the weights of the best epoch by `selection` into `model` (on its device). A file
        that loads but does not hold this model's weights (another architecture's, a list, a
        dict of other things) is a `Damaged` error naming it."""
        path = self.path / BEST_OF[selection]
        device = next(model.parameters()).device
        weights = self.load_best(device, selection)
        problem = weights_problem(weights, model.state_dict())
        if problem:
            raise Damaged(f"{path} does not hold this run's weights: {problem}; train the run again "
                          f"with --overwrite")
        model.load_state_dict(weights)

    # --- what the figures read: leniently where a title needs it, else a ConfigError (exit 2) ---
    def config_name_and_seed(self) -> tuple[str, int | None]:
        """('<config folder>/<config name>', seed) from config.yaml, else (the directory's name,
        None): for titles, which must not fail on a directory without one."""
        try:
            document = yaml.safe_load((self.path / CONFIG).read_text())
            config_path, seed = Path(document["run"]["yaml"]), document["training"]["seed"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return self.path.resolve().name, None
        return f"{config_path.parent.name}/{config_path.stem}", seed

    def best_epoch(self, config: Config | None = None) -> int | None:
        """The epoch of best.pt: results.json's, or, given the run's config, the checkpoint's
        for a run that has not ended; None where neither says. A damaged file is an error."""
        results = self.read_results()
        if results is not None:
            return results.get("best_epoch")
        if config is None:
            return None
        best = (self.load_checkpoint(config) or {}).get("best") or {}
        return best.get(PRIMARY_SELECTION, best).get("epoch")  # before the selections: one record

    def metrics_rows(self) -> list[dict]:
        return read_jsonl(self._existing() / METRICS, ("epoch", "train_loss"))

    def analysis_records(self) -> list[dict]:
        """The analysis records, in the order they were measured (by step where the records
        say it, else by epoch), each checked for its keys and its matrices' shapes."""
        path = self._existing() / ANALYSIS
        if not path.is_file():
            raise ConfigError(f"{self.path}: no {ANALYSIS}, so no analysis records (the run was not "
                              f"analysed during training)")
        records = read_jsonl(path, ANALYSIS_KEYS)
        for record in records:
            layers = len(record["layers"])
            shapes_agree = (len(record["cka"]) == layers + 1
                            and all(len(row) == layers + 1 for row in record["cka"])
                            and len(record["weight_cosine"]) == len(record["grad_angle_deg"]) == layers)
            if not shapes_agree:
                raise ConfigError(f"{path}, {point_name(record)}: cka is not {layers + 1} x {layers + 1} "
                                  f"(a_0..a_{layers} x b_0..b_{layers}) or weight_cosine, grad_angle_deg "
                                  f"have not {layers} entries (one per layer)")
        if all("step" in record for record in records):
            return sorted(records, key=lambda record: record["step"])
        return sorted(records, key=lambda record: record["epoch"])

    def best_weights(self) -> dict[str, torch.Tensor]:
        """best.pt's state dict on the CPU, checked to be one, without a model to load it into."""
        path = self._existing() / BEST
        if not path.is_file():
            raise ConfigError(f"{self.path}: no {BEST}, so no weights (the run has not finished an epoch)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001  (torch.load raises many kinds for a bad file)
            raise ConfigError(f"{path}: not a readable state dict ({type(error).__name__})") from None
        problem = weights_problem(state)
        if problem:
            raise ConfigError(f"{path} does not hold this run's weights: {problem}")
        return state

    def _existing(self) -> Path:
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: no such run directory")
        return self.path


def point_name(record: dict) -> str:
    """'epoch E' for an analysis record that ends an epoch, else 'step S'."""
    return f"epoch {record['epoch']}" if record.get("epoch") is not None else f"step {record['step']}"


def read_jsonl(path: Path, required: Sequence[str]) -> list[dict]:
    """The objects of a JSON-lines file, each checked for the `required` keys."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}, line {number}: not JSON ({error.msg})") from None
        missing = [key for key in required if not isinstance(row, dict) or key not in row]
        if missing:
            raise ConfigError(f"{path}, line {number}: no {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no records")
    return rows


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)


def _results_problem(results: Any) -> str | None:
    if not isinstance(results, dict) or results.get("status") not in (FINISHED, DIVERGED):
        return "no status finished or diverged"
    if results["status"] == FINISHED:
        missing = [k for k in ("best_epoch", "wall_seconds") if k not in results]
        if not any(k.startswith("test_") for k in results):
            missing.append("test metrics")
        if missing:
            return f"it lacks {', '.join(missing)}"
    return None


def weights_problem(weights: Any, expected: dict[str, torch.Tensor] | None = None) -> str | None:
    """What keeps `weights` from being a state dict (names -> tensors), and with `expected`
    (a model's state dict) from being that model's: None when nothing does."""
    if not isinstance(weights, dict):
        return f"it holds a {type(weights).__name__}, not a mapping of names to tensors"
    wrong = [f"{name!r} is a {type(value).__name__}" for name, value in weights.items()
             if not isinstance(value, torch.Tensor)]
    if wrong:
        return f"{', '.join(wrong[:3])}, not a tensor"
    if expected is None:
        return None
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        return "; ".join(f"{what} {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                         for what, names in (("no", missing), ("unexpected", unexpected)) if names)
    shapes = [f"{name} has shape {tuple(weights[name].shape)}, the model's {tuple(value.shape)}"
              for name, value in expected.items() if weights[name].shape != value.shape]
    return "; ".join(shapes[:3]) or None


def _load(path: Path, what: str, fix: str, missing_ok: bool = False, map_location="cpu"):
    """torch.load of a file of the run, telling a damaged file (`fix` says what to do) from an
    unreadable disk (a disk that may come back: the file is left alone, and no fix is offered
    that would delete it)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    except OSError as error:
        raise UserError(f"the {what} {path} cannot be read: {error.strerror or error} "
                        f"(the file is left as it is)") from None
    except Exception as error:  # noqa: BLE001  (every unpickling failure means a damaged file)
        summary = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Damaged(f"the {what} {path} is damaged ({summary}); {fix}") from None


class ReadOnlyRunDir(RunDir):
    """The run directory as the ranks other than 0 of a run over several processes see it:
    rank 0 alone writes it and holds its lock (ccl/distributed), so every write here is skipped."""

    @contextmanager
    def locked(self) -> Iterator[RunDir]:
        yield self

    def _skip(self, *args) -> None:
        return None

    clear = write_config = write_metrics = save_checkpoint = save_best = write_results = \
        remove_results = _skip
