"""Opt-in loggers (`--logger tensorboard`, `--logger wandb`): mirrors of what a run writes to
metrics.jsonl and analysis.jsonl, for those tools' dashboards. Off by default, and neither
package is needed unless asked for: asking for one that is not installed stops the run before
it starts, with the pip command (exit code 2).

Each logger gets, with the epoch as its step: every metrics row (train_loss, val_*, lr_F, lr_B,
step, seconds), every analysis record as scalars (`weight_cosine/<layer>`,
`grad_angle_deg/<layer>`, `cka/a<i>_b<j>`; undefined values are left out), and at the end the
test metrics and the best epoch. The run directory's files stay the record; a logger may lag
behind them by what a kill interrupted, so a run that starts again (--resume) first sends
everything its checkpoint holds:

- TensorBoard writes event files to RUN_DIR/tensorboard/. A resumed run opens a new event file
  that purges every earlier event (purge_step 0) and sends the whole history again, so the
  dashboard shows exactly metrics.jsonl and analysis.jsonl.
- Weights & Biases (`wandb`) keeps its files in RUN_DIR/wandb/. The W&B run's id is the run
  directory's (`id` in config.yaml's run section), so a resumed run continues the same W&B run
  and sends again only what W&B has not seen (from its last logged epoch on; in offline mode W&B
  cannot tell, so everything). Project and entity: --wandb_project / --wandb_entity, else
  WANDB_PROJECT / WANDB_ENTITY, else project `ccl` and the API key's default entity. The API key
  is read from the environment only (WANDB_API_KEY); WANDB_MODE=offline needs none, and no
  network. Online, the W&B server (WANDB_BASE_URL) must answer within a few seconds before the
  run starts: without a network W&B would retry for minutes and then fail with a traceback.
"""
from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ccl.run_dir import RunDir
from utils.errors import ConfigError, UserError, one_line

# logger -> (the module it imports, the pip package that provides it)
REQUIREMENTS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}
LOGGER_NAMES = tuple(REQUIREMENTS)
DEFAULT_WANDB_PROJECT = "ccl"
WANDB_KEYLESS_MODES = ("offline", "disabled", "dryrun")
DEFAULT_WANDB_BASE_URL = "https://api.wandb.ai"
WANDB_REACH_SECONDS = 5
OFFLINE_HINT = ("set WANDB_MODE=offline to log into the run directory without a network (`wandb sync` "
                "uploads it later), or drop --logger wandb")


def check_available(names: Sequence[str]) -> None:
    """A ConfigError naming the pip command for a requested logger that cannot be imported, or
    the environment variable W&B needs."""
    for name in names:
        module, package = REQUIREMENTS[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"--logger {name}: the {package} package is not installed; install it "
                              f"with `pip install {package}`, or drop --logger {name}") from None
    if ("wandb" in names and os.environ.get("WANDB_MODE") not in WANDB_KEYLESS_MODES
            and not os.environ.get("WANDB_API_KEY")):
        raise ConfigError("--logger wandb: set WANDB_API_KEY in the environment (the key is read from "
                          "there only), or WANDB_MODE=offline to log into the run directory without "
                          "a network")
    if "wandb" in names and os.environ.get("WANDB_MODE") not in WANDB_KEYLESS_MODES:
        check_wandb_reachable()


def check_wandb_reachable() -> None:
    """A ConfigError, within seconds, when the W&B server cannot be reached."""
    url = os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_BASE_URL
    host, _, port = url.split("://", 1)[-1].split("/", 1)[0].partition(":")
    try:
        socket.create_connection((host, int(port or (80 if url.startswith("http:") else 443))),
                                 timeout=WANDB_REACH_SECONDS).close()
    except (OSError, ValueError) as error:
        raise ConfigError(f"--logger wandb: the W&B server {url} cannot be reached ({one_line(error)}); "
                          f"{OFFLINE_HINT}") from None


def analysis_scalars(record: dict) -> dict[str, float]:
    """An analysis record as named scalars; null (undefined) values are left out."""
    layers = record["layers"]
    scalars = {}
    for key in ("weight_cosine", "grad_angle_deg"):
        scalars.update({f"{key}/{layer}": value for layer, value in zip(layers, record[key])})
    for i, row in enumerate(record["cka"]):
        scalars.update({f"cka/a{i}_b{j}": value for j, value in enumerate(row)})
    return {name: value for name, value in scalars.items() if value is not None}


class TensorBoard:
    def __init__(self, run_dir: RunDir, **_):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=0)

    def log(self, epoch: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=epoch)
        self.writer.flush()  # a dashboard shows each epoch as it ends

    def summary(self, epoch: int, values: dict[str, float]) -> None:
        self.log(epoch, values)

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, run_dir: RunDir, config, run_id: str, project: str | None, entity: str | None):
        import wandb
        try:
            self.run = wandb.init(
                project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT,
                entity=entity or os.environ.get("WANDB_ENTITY") or None,
                id=run_id, resume="allow", name="/".join(run_dir.path.resolve().parts[-3:]),
                config=config.as_dict(), dir=str(run_dir.path),
                settings=wandb.Settings(console="off"))  # the run's own output stays on the terminal
        except Exception as error:  # noqa: BLE001  (wandb's errors share no base class we can name)
            raise UserError(f"--logger wandb: W&B could not start a run ({one_line(error)}); "
                            f"{OFFLINE_HINT}") from None
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        # the last epoch W&B has may be incomplete (a kill between two calls): it is sent again
        self.first_unseen = self.run.summary.get("epoch", 0) if self.run.resumed else 0

    def log(self, epoch: int, scalars: dict[str, float]) -> None:
        if epoch >= self.first_unseen:
            self.run.log({"epoch": epoch, **scalars})

    def summary(self, epoch: int, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self) -> None:
        self.run.finish()


BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB}


class Loggers:
    """The loggers of one run (none by default): each gets what the trainer records."""

    def __init__(self, backends: Sequence = ()):
        self.backends = list(backends)

    def _log(self, epoch: int, scalars: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log(epoch, scalars)

    def metrics(self, row: dict) -> None:
        self._log(row["epoch"], {name: value for name, value in row.items() if name != "epoch"})

    def analysis(self, record: dict) -> None:
        self._log(record["epoch"], analysis_scalars(record))

    def replay(self, history: Sequence[dict], analysis: Sequence[dict]) -> None:
        """Everything a restored checkpoint holds, epoch by epoch as it was recorded (an
        epoch's analysis comes before its metrics row)."""
        if not self.backends:
            return
        records = {record["epoch"]: record for record in analysis if record["epoch"] is not None}
        rows = {row["epoch"]: row for row in history}
        for epoch in sorted(records.keys() | rows.keys()):
            if epoch in records:
                self.analysis(records[epoch])
            if epoch in rows:
                self.metrics(rows[epoch])

    def results(self, results: dict) -> None:
        values = {name: value for name, value in results.items()
                  if name.startswith("test_") or name == "best_epoch"}
        for backend in self.backends:
            backend.summary(results["epochs"], values)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


@contextmanager
def opened(names: Sequence[str], run_dir: RunDir, config, run_id: str,
           wandb_project: str | None = None, wandb_entity: str | None = None) -> Iterator[Loggers]:
    """The requested loggers, closed (their files flushed) however the run ends."""
    loggers = Loggers()
    try:
        for name in names:
            loggers.backends.append(BACKENDS[name](run_dir=run_dir, config=config, run_id=run_id,
                                                   project=wandb_project, entity=wandb_entity))
        yield loggers
    finally:
        loggers.close()
