"""The training loop shared by every entry script, rule and objective.

Per epoch: train, validate, keep the best models (the lowest validation loss, as released, and
the objective's other selections, e.g. the highest validation accuracy), step the cosine
schedule, checkpoint; with `analysis_every`, measure the model on a probe batch between epochs
(ccl/measures.py). At the end: test each selected model and the last epoch's. What the loop
writes, and how, is the run directory's (ccl/run_dir.py): checkpoint.pt is written first, and
metrics.jsonl, analysis.jsonl and the best models are views of it that a resumed run rewrites,
so a kill between two writes loses nothing. The opt-in loggers (ccl/loggers.py) get the same
rows and records. The step never waits for the device: the losses stay on the device and are
read every few steps, to check for divergence and add them up.
"""
from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ccl.acceleration import LossFunction, training_loss
from ccl.config import step_numbers
from ccl.distributed import ONE_PROCESS, World
from ccl.distributed.data import shard
from ccl.loggers import Loggers
from ccl.measures import analyse, probe_batch
from ccl.objectives import in_order_sum
from ccl.optim import DualOptimizer
from ccl.run_dir import ANALYSIS, FINISHED, LAST_EPOCH, PRIMARY_SELECTION, RunDir
from ccl.target_prop import FeedbackPhase
from utils.seed import restore_rng_states, rng_states

DIVERGENCE_CHECK_EVERY = 50  # steps between reads of the device-side divergence flag
PROGRESS_EVERY_SECONDS = 30  # without a terminal (no progress bar): a plain line this often


class Diverged(Exception):
    """The loss (at `step`), a parameter or the validation loss (by `step`) became NaN or
    infinite."""

    def __init__(self, step: int, what: str = "training loss"):
        when = "at" if what == "training loss" else "by"
        super().__init__(f"the {what} became NaN or infinite {when} step {step}")
        self.step = step
        self.what = what


class Interrupted(Exception):
    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class DivergenceMonitor:
    """Holds each step's training loss on the device, unread, until `raise_if_diverged` reads
    them all at once: it raises at the first step whose loss was not finite, and otherwise adds
    every loss times its batch size to `loss_sum` (float64, in step order) and the batch sizes
    to `samples`. Between two reads the step costs no device work and never waits for the device.

    Across processes the read averages each step's loss over the ranks (the global batch's loss)
    and carries the ranks' stop requests (`stop`), in one all-reduce: every rank then diverges,
    or stops, at the same step."""

    def __init__(self, step: int = 0, loss_sum: float = 0.0, samples: int = 0,
                 world: World = ONE_PROCESS, stop: StopRequests | None = None,
                 term_sums: list[float] | None = None):
        self.step = step  # steps observed, the unread ones included
        self.loss_sum = loss_sum
        self.samples = samples
        # the loss terms times the global batch sizes, added up as the losses are (loss_sum)
        self.term_sums = term_sums
        self._terms: list[torch.Tensor] = []
        self.world, self.stop = world, stop
        self._agreed_stop: int | None = None
        self._losses: list[torch.Tensor] = []
        self._batch_sizes: list[int] = []

    def observe(self, loss: torch.Tensor, batch_size: int = 1, terms: torch.Tensor | None = None) -> None:
        self._losses.append(loss.detach())
        if terms is not None and terms.dim() == 1:
            self._terms.append(terms.detach())
        self._batch_sizes.append(self.world.global_size(batch_size))
        self.step += 1

    def stop_signal(self) -> int | None:
        """The signal to stop for at this step boundary: in one process as soon as it came;
        across processes once every rank knows of it (at a read)."""
        if self.world.size == 1:
            return self.stop.signal_number if self.stop else None
        return self._agreed_stop

    def raise_if_diverged(self) -> None:
        if not self._losses:
            return
        losses = torch.stack(self._losses)
        sizes = torch.tensor(self._batch_sizes, dtype=losses.dtype, device=losses.device)
        # the loss terms (CCL's output and pair losses) travel in the same read, weighted alike
        terms = (torch.stack(self._terms).T.to(losses.dtype) * sizes if self._terms
                 else losses.new_zeros((0, len(losses))))
        (values, weighted, *term_rows), self._agreed_stop = self.world.read_mean(  # the one read
            torch.cat((torch.stack((losses, losses * sizes)), terms)),
            self.stop.signal_number if self.stop else None)
        first_step = self.step - len(values) + 1
        batch_sizes, self._losses, self._batch_sizes, self._terms = self._batch_sizes, [], [], []
        for offset, (value, product) in enumerate(zip(values, weighted)):
            if not math.isfinite(value):
                raise Diverged(first_step + offset)
            self.loss_sum += product
            self.samples += batch_sizes[offset]
        if term_rows:
            sums = [math.fsum(row) for row in term_rows]
            self.term_sums = sums if self.term_sums is None else [a + b for a, b in zip(self.term_sums, sums)]


class StopRequests:
    """SIGINT/SIGTERM set a flag that the loop reads at the next step boundary."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal_number: int | None = None
        self._previous = {}

    def __enter__(self):
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._request)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _request(self, number, frame):
        if self.signal_number is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal_number = number


class PlainProgress:
    """tqdm draws no bar when stderr is not a terminal (a log file, a batch job): then a plain
    line every PROGRESS_EVERY_SECONDS says how far the epoch is. It reads only the host's clock and
    what the divergence monitor has already read of the losses, never the device."""

    def __init__(self, bar: tqdm, name: str, log: Callable[[str], None]):
        self.name, self.total, self.log, self.every = name, bar.total, log, PROGRESS_EVERY_SECONDS
        self.started = time.perf_counter()
        self.due = self.started + self.every if bar.disable else math.inf

    def __call__(self, batch: int, monitor: DivergenceMonitor) -> None:
        now = time.perf_counter()
        if now < self.due:
            return
        self.due = now + self.every
        loss = f", mean training loss {monitor.loss_sum / monitor.samples:.4g}" if monitor.samples else ""
        self.log(f"{self.name}: batch {batch}/{self.total}, {now - self.started:.0f}s{loss}")


@dataclass
class Progress:
    """Where the run stands: the epoch in progress and how much of it is done."""

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0
    augment_state: torch.Tensor | None = None
    term_sums: list[float] | None = None  # the loss terms times batch sizes (DivergenceMonitor)


def _better(value: float, best: float, lower_is_better: bool) -> bool:
    return value < best if lower_is_better else value > best


@dataclass
class Training:
    """What a training step needs of an experiment, made once per run (`of`): the rule's loss,
    as its terms if it has them, under the config's precision (compiled if asked), the
    optimizer, the processes and the rule's feedback phase (target propagation's; None for the
    other rules)."""

    loss: LossFunction
    optimizer: DualOptimizer
    world: World
    feedback_phase: FeedbackPhase | None

    @classmethod
    def of(cls, experiment) -> "Training":
        config, model = experiment.config, experiment.model
        return cls(training_loss(config, model, experiment.objective, experiment.rule, as_terms=True),
                   DualOptimizer(model, config), experiment.world, experiment.feedback_phase)


def train_step(training: Training, inputs: torch.Tensor, targets: torch.Tensor,
               batch_in_epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step, the whole of it: the rule's feedback phase, if it has one; the rule's
    loss, scaled down during the warm-up; its gradients by `backward()`, averaged over the run's
    processes (a no-op in one); then centralised, clipped and applied to both networks. The
    trainer and the benchmark both take their steps here. The loss and its terms (the loss
    itself for a rule without terms) are returned unread: reading them would wait for the device."""
    if training.feedback_phase is not None:
        training.feedback_phase.step(inputs, targets)
    terms = training.loss(inputs, targets)  # the loss, or the terms that add up to it
    loss = in_order_sum(terms)
    training.optimizer.warmup_scaled(loss, batch_in_epoch).backward()
    training.world.average_gradients(training.optimizer.parameters)
    training.optimizer.step()
    return loss, terms


class Trainer:
    def __init__(self, experiment, run_dir: RunDir, log: Callable[[str], None] = print,
                 loggers: Loggers | None = None):
        self.config = experiment.config
        self.model = experiment.model
        self.objective = experiment.objective
        self.world = experiment.world
        self.data = shard(experiment.data, self.world)  # each rank's part of every batch
        self.rule = experiment.rule
        self.training = Training.of(experiment)
        self.optimizer = self.training.optimizer
        self.feedback_phase = self.training.feedback_phase
        # a rule with loss terms has each logged per epoch (train_loss_<name>)
        self.term_names = (self.objective.term_names(len(self.model.layers)) if self.rule.loss_terms
                           else [])
        self.run_dir = run_dir
        self.log = log
        self.loggers = loggers or Loggers()
        self.analysis_steps = set(step_numbers(self.config.analysis_steps))  # global steps to measure at
        self.probe = (probe_batch(getattr(self.data, self.config.analysis_split),
                                  self.config.analysis_samples, self.config.seed)
                      if self.config.analysis_every or self.analysis_steps else None)
        self.analysis: list[dict] = []  # the analysis records, in the order they were measured
        self.device = next(self.model.parameters()).device
        self.progress = Progress()
        self.history: list[dict] = []
        self.best: dict[str, dict] = {}  # selection -> its epoch and validation metrics
        self.wall_seconds = 0.0  # training and validation before this process's part of the run
        self.clock_started: float | None = None  # when this process's part began
        self.stop = StopRequests()

    # --- checkpoints -----------------------------------------------------------------------
    def checkpoint(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "progress": vars(self.progress).copy(), "history": self.history, "best": self.best,
                "analysis": self.analysis,
                "wall_seconds": self.seconds_so_far(), "rng": rng_states(),
                "config": self.config.as_dict(),
                "cpu_threads": torch.get_num_threads(),  # CPU sums depend on the thread count
                "processes": self.world.size,  # and so do the ranks' reductions
                "feedback_phase": self.feedback_phase.state_dict() if self.feedback_phase else None}

    def seconds_so_far(self) -> float:
        """Training and validation time over every part of the run, this process's included."""
        running = 0.0 if self.clock_started is None else time.perf_counter() - self.clock_started
        return self.wall_seconds + running

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint (loaded on the CPU)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(**state["progress"])
        self.history, self.best = state["history"], state["best"] or {}
        if "epoch" in self.best:  # a checkpoint from before the selections: the released one only
            self.best = {PRIMARY_SELECTION: self.best}
        self.analysis = state.get("analysis", [])  # checkpoints written before analysis_every have none
        self.wall_seconds = state["wall_seconds"]
        restore_rng_states(state["rng"])
        if self.feedback_phase is not None:
            self.feedback_phase.load_state_dict(state["feedback_phase"])

    def rewrite_views(self) -> None:
        """Bring metrics.jsonl and best.pt back in line with the restored checkpoint (a kill may
        have come between the checkpoint's write and theirs)."""
        at_best_epoch = [name for name, best in self.best.items()
                         if self.progress.batch == 0 and best["epoch"] == self.progress.epoch]
        self._write_views(new_best=at_best_epoch)

    def _write_views(self, new_best: list[str]) -> None:
        """metrics.jsonl (and analysis.jsonl), and the best models of the selections whose best
        the model just became."""
        self.run_dir.write_metrics(self.history)
        if self.probe is not None:
            self.run_dir.write_analysis(self.analysis)
        for selection in new_best:
            self.run_dir.save_best(self.model.state_dict(), selection)

    # --- training --------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the last epoch and test the best model; returns the results."""
        self.clock_started = time.perf_counter()
        self.loggers.replay(self.history, self.analysis)  # what a resumed run had logged before
        try:
            with self.stop:
                if self.optimizer.steps_taken == 0 and (self.config.analysis_every or 0 in self.analysis_steps):
                    self._analyse(epoch=0)  # before any step
                    self.run_dir.write_analysis(self.analysis)
                self._pretrain_feedback()
                while self.progress.epoch < self.config.epochs:
                    monitor = self._train_epoch()
                    self._finish_epoch()
                    stop = monitor.stop_signal()
                    if stop is not None and self.progress.epoch < self.config.epochs:
                        raise Interrupted(stop)
        finally:
            self.wall_seconds, self.clock_started = self.seconds_so_far(), None  # the test is not counted
        return self._test()

    def _train_epoch(self) -> DivergenceMonitor:
        progress, loader = self.progress, self.data.train
        self.model.train()
        monitor = DivergenceMonitor(self.optimizer.steps_taken, progress.loss_sum, progress.samples,
                                    self.world, self.stop, progress.term_sums)
        started = time.perf_counter()
        batches = loader.epoch(progress.epoch, progress.batch, progress.augment_state)
        name = f"epoch {progress.epoch + 1}/{self.config.epochs}"
        bar = tqdm(batches, total=len(loader), initial=progress.batch, disable=None, leave=False,
                   desc=name, dynamic_ncols=True)
        report = PlainProgress(bar, name, self.log)
        for inputs, targets in bar:
            loss, terms = train_step(self.training, inputs, targets, progress.batch)
            monitor.observe(loss, len(targets), terms)
            progress.batch += 1
            if self.optimizer.steps_taken in self.analysis_steps:  # a set of ints: no device read
                self._analyse(epoch=None)
                self.run_dir.write_analysis(self.analysis)
            if self.optimizer.steps_taken % DIVERGENCE_CHECK_EVERY == 0:
                monitor.raise_if_diverged()
            report(progress.batch, monitor)
            stop = monitor.stop_signal()
            if stop is not None and progress.batch < len(loader):
                monitor.raise_if_diverged()  # never checkpoint a diverged model
                self._raise_if_parameters_diverged()
                progress.loss_sum, progress.samples = monitor.loss_sum, monitor.samples
                progress.term_sums = monitor.term_sums
                progress.seconds += time.perf_counter() - started
                progress.augment_state = loader.generator.get_state()
                self.run_dir.save_checkpoint(self.checkpoint())
                raise Interrupted(stop)
        monitor.raise_if_diverged()
        self._raise_if_parameters_diverged()
        progress.loss_sum, progress.samples = monitor.loss_sum, monitor.samples
        progress.term_sums = monitor.term_sums
        progress.seconds += time.perf_counter() - started
        return monitor

    def _pretrain_feedback(self) -> None:
        """Target propagation's feedback pre-training, before the first forward step; once per
        run: a resumed run's checkpoint says it was done."""
        phase = self.feedback_phase
        if phase is not None and not phase.pretrained:
            started = time.perf_counter()
            self.log(f"pre-training the feedback network: {phase.pretrain_epochs} epoch(s) of one "
                     f"feedback call per batch")
            phase.pretrain(self.data.train.epoch)
            self.log(f"pre-training done ({time.perf_counter() - started:.1f}s)")

    def _raise_if_parameters_diverged(self) -> None:
        finite = torch.stack([p.isfinite().all() for p in self.model.parameters()]).all()
        if not finite:
            raise Diverged(self.optimizer.steps_taken, what="parameters")

    def _finish_epoch(self) -> None:
        progress = self.progress
        started = time.perf_counter()
        val = self.evaluate(self.data.val)
        criterion = self.objective.metric_names[0]
        if not math.isfinite(val[criterion]):  # finite weights whose outputs overflow
            raise Diverged(self.optimizer.steps_taken, what=f"validation {criterion}")
        row = {"epoch": progress.epoch + 1, "step": self.optimizer.steps_taken,
               "train_loss": progress.loss_sum / max(progress.samples, 1),
               **self._mean_loss_terms(progress),
               **{f"val_{name}": value for name, value in val.items()},
               **self.optimizer.learning_rates(),
               "seconds": progress.seconds, "eval_seconds": time.perf_counter() - started}
        self.history.append(row)
        improved = [name for name, (metric, lower) in self.objective.selections.items()
                    if name not in self.best or _better(val[metric], self.best[name][f"val_{metric}"], lower)]
        for name in improved:
            self.best[name] = {"epoch": row["epoch"], **{f"val_{k}": v for k, v in val.items()}}
        if self._analysis_due(row["epoch"]):
            self._analyse(row["epoch"])
        self.optimizer.end_epoch()
        self.progress = Progress(epoch=progress.epoch + 1)
        self.run_dir.save_checkpoint(self.checkpoint())
        self._write_views(new_best=improved)
        self.loggers.metrics(row)
        self.log(self._summary(row))

    def _mean_loss_terms(self, progress: Progress) -> dict[str, float]:
        """The epoch's mean of each loss term, added up at the monitor's reads (no read of its own)."""
        if progress.term_sums is None:
            return {}
        means = [term_sum / max(progress.samples, 1) for term_sum in progress.term_sums]
        return {f"train_loss_{name}": value for name, value in zip(self.term_names, means, strict=True)}

    def _analysis_due(self, epoch: int) -> bool:
        every = self.config.analysis_every
        return bool(every) and (epoch % every == 0 or epoch == self.config.epochs)

    def _analyse(self, epoch: int | None) -> None:
        """Measure the model on the probe batch at this step (`epoch`: the epoch it ends, or
        None in the middle of one); `analyse` leaves the model and the random states as they
        were, so the training goes on bit-identical. A step measured already (an analysis_steps
        step that ends an analysed epoch) is not measured again: its record gets the epoch."""
        step = self.optimizer.steps_taken
        if self.analysis and self.analysis[-1].get("step") == step:
            self.analysis[-1]["epoch"] = epoch if epoch is not None else self.analysis[-1]["epoch"]
            record = self.analysis[-1]
        else:
            started = time.perf_counter()
            record = {"epoch": epoch, "step": step,
                      **analyse(self.model, self.objective, self.rule.loss_of(self.config), *self.probe)}
            self.analysis.append(record)
            self.log(f"analysis of step {step} ({len(self.probe[1])} {self.config.analysis_split} "
                     f"samples, {time.perf_counter() - started:.1f}s) -> {self.run_dir / ANALYSIS}")
            if self.config.analysis_snapshots and step in self.analysis_steps:
                self.run_dir.save_snapshot(step, self.model.state_dict())
        if epoch is not None:
            self.loggers.analysis(record)

    @staticmethod
    def _summary(row: dict) -> str:
        parts = [f"epoch {row['epoch']}"]
        for name, value in row.items():
            if name not in ("epoch", "step", "seconds", "eval_seconds") and not name.startswith("train_loss_"):
                parts.append(f"{name} {value:.4g}")
        parts.append(f"{row['seconds']:.1f}s")
        return "  ".join(parts)

    def _test_metrics(self) -> dict[str, float]:
        return {f"test_{name}": value for name, value in self.evaluate(self.data.test).items()}

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """The objective's metrics of the forward network alone over `loader` (eval mode)."""
        was_training = self.model.training
        self.model.eval()
        sums = None
        for inputs, targets in loader.epoch():
            batch_sums = self.objective.metric_sums(self.model.predict(inputs), targets)
            sums = batch_sums if sums is None else sums + batch_sums
        self.model.train(was_training)
        values = (self.world.sum(sums) / loader.num_samples).tolist()  # the ranks' shards' sums
        return dict(zip(self.objective.metric_names, values))

    def best_so_far(self) -> dict:
        """The best epoch by the released selection and its validation metrics (best_epoch None
        before the first)."""
        best = self.best.get(PRIMARY_SELECTION, {"epoch": None})
        return {"best_epoch": best["epoch"], **{k: v for k, v in best.items() if k != "epoch"}}

    def _test(self) -> dict:
        """The test metrics of the last epoch's model and of each selection's best, the released
        selection's at the top level (and in the model afterwards). Each epoch's model is tested
        once: selections that chose the same epoch kept the same weights."""
        held = self.progress.epoch  # the epoch whose weights the model holds: the last
        epochs = {name: self.best[name]["epoch"] for name in self.objective.selections}
        self.log(f"testing the models of epochs {', '.join(map(str, sorted({held, *epochs.values()})))} "
                 f"({', '.join(f'{name} {epoch}' for name, epoch in {**epochs, LAST_EPOCH: held}.items())})")
        metrics = {held: self._test_metrics()}
        tested = {LAST_EPOCH: {"epoch": held, **metrics[held]}}
        for name in reversed(self.objective.selections):  # the released selection's last
            epoch = epochs[name]
            if epoch != held and (epoch not in metrics or name == PRIMARY_SELECTION):
                self.model.load_state_dict(self.world.on_main(lambda: self.run_dir.load_best("cpu", name)))
                held = epoch
            if epoch not in metrics:
                metrics[epoch] = self._test_metrics()
            tested[name] = {"epoch": epoch, **metrics[epoch]}
        selections = {name: tested[name] for name in (*self.objective.selections, LAST_EPOCH)}
        return {"status": FINISHED,
                **{k: v for k, v in selections[PRIMARY_SELECTION].items() if k != "epoch"},
                **self.best_so_far(),
                "selections": selections,
                "epochs": self.progress.epoch,
                "steps": self.optimizer.steps_taken,
                "train_seconds": sum(row["seconds"] for row in self.history),
                "wall_seconds": self.wall_seconds}
