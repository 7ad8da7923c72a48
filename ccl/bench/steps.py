"""Step time of BP and CCL on one architecture, and where the time of a step goes.

The step is what the trainer runs per batch after the batch is made: the rule's loss
(forward, feedback, layer losses), its `backward()` and `DualOptimizer.step` (centralisation,
clipping, both SGD steps). Each repeat times a run of steps on batches made beforehand, with one mark
before and one after; BP and CCL take turns repeat by repeat, so a change in the machine's load
hits both. The split times every phase of single steps, the making of the batch included.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field

from ccl.bench.cases import CASES, METHODS, Case, build_case, load_config, synthetic_splits
from ccl.bench.clock import Clock, state_bytes
from ccl.bench.profile import operators_per_step, top_operators

PHASES = ("data", "forward_feedback", "backward", "update")
POOL_BATCHES = 32  # distinct batches a repeat cycles through: too many to memorise in a few passes
SECONDS_PER_REPEAT = 0.5  # when the steps per repeat are not given ...
STEPS_PER_REPEAT = (3, 200)  # ... as many as fill this time, within these bounds
PROFILED_STEPS = 10  # at most, with --profile


@dataclass
class Settings:
    repeats: int = 5
    steps: int | None = None  # steps per repeat; None: as many as fill SECONDS_PER_REPEAT
    warmup: int = 3
    overrides: dict = field(default_factory=dict)  # config keys set in every case
    profile: bool = False  # also rank the operators of a step by their time


@dataclass
class StepResult:
    arch: str
    method: str
    batch_size: int
    steps_per_repeat: int
    repeat_ms: list[float]  # mean step time of each repeat
    split_ms: dict[str, float]  # mean time per step of each phase
    peak_mb: float | None  # model + optimizer state + the step's peak working memory
    operators: list[dict] | None = None  # --profile: the costliest operators of a step ...
    operator_count: int | None = None  # ... and how many operators it dispatches

    @property
    def step_ms(self) -> float:
        return statistics.median(self.repeat_ms)

    @property
    def samples_per_s(self) -> float:
        return self.batch_size / self.step_ms * 1000

    def as_dict(self) -> dict:
        return {**vars(self), "step_ms": self.step_ms, "samples_per_s": self.samples_per_s}


def endless_batches(case: Case) -> Iterator:
    """The training loader's batches, epoch after epoch (each epoch reshuffled)."""
    epoch = 0
    while True:
        yield from case.experiment.data.train.epoch(epoch)
        epoch += 1


def time_split(case: Case, batches: Iterator, clock: Clock, steps: int) -> dict[str, float]:
    """Mean seconds per step of each phase over `steps` steps, marks between the phases."""
    marks = []
    for _ in range(steps):
        start = clock.mark()
        inputs, targets = next(batches)
        made = clock.mark()
        loss = case.loss(inputs, targets)
        computed = clock.mark()
        case.optimizer.warmup_scaled(loss).backward()
        differentiated = clock.mark()
        case.optimizer.step()
        marks.append((start, made, computed, differentiated, clock.mark()))
    clock.sync()
    return {phase: sum(clock.seconds(m[index], m[index + 1]) for m in marks) / steps
            for index, phase in enumerate(PHASES)}


def time_steps(case: Case, pool: list, clock: Clock, steps: int) -> float:
    """Mean seconds per step over `steps` steps on the batches of `pool`, in turn."""
    clock.sync()
    start = clock.mark()
    for index in range(steps):
        case.step(*pool[index % len(pool)])
    end = clock.mark()
    clock.sync()
    return clock.seconds(start, end) / steps


def peak_memory_mb(case: Case, batch, clock: Clock) -> float | None:
    clock.start_peak_memory()
    case.step(*batch)
    working = clock.peak_memory_bytes()
    return None if working is None else (working + state_bytes(case)) / 2**20


def calibrated_steps(step_seconds: float) -> int:
    wanted = math.ceil(SECONDS_PER_REPEAT / max(step_seconds, 1e-9))
    return min(max(wanted, STEPS_PER_REPEAT[0]), STEPS_PER_REPEAT[1])


def build_cases(arch: str, settings: Settings, device) -> dict[str, Case]:
    """BP and CCL on the architecture's config, each with its own synthetic data."""
    cases = {}
    for method in METHODS:
        config, script = load_config(CASES[arch], {**settings.overrides, "method": method})
        batch = config.batchsize
        splits = synthetic_splits(config.dataset, (POOL_BATCHES * batch, batch, batch), device)
        cases[method] = build_case(config, script, splits, device)
    return cases


def benchmark_architecture(arch: str, settings: Settings, device) -> list[StepResult]:
    clock = Clock(device)
    cases = build_cases(arch, settings, device)
    batches = {method: endless_batches(case) for method, case in cases.items()}
    for method, case in cases.items():
        time_split(case, batches[method], clock, settings.warmup)  # kernel loading, compilation
    steps = settings.steps or calibrated_steps(max(
        sum(time_split(case, batches[method], clock, 1).values()) for method, case in cases.items()))
    repeats = {method: [] for method in cases}
    for _ in range(settings.repeats):
        for method, case in cases.items():
            pool = [next(batches[method]) for _ in range(min(steps, POOL_BATCHES))]
            repeats[method].append(time_steps(case, pool, clock, steps) * 1000)
    results = []
    for method, case in cases.items():
        split = time_split(case, batches[method], clock, steps)
        peak = peak_memory_mb(case, next(batches[method]), clock)
        result = StepResult(arch, method, case.config.batchsize, steps, repeats[method],
                            {phase: seconds * 1000 for phase, seconds in split.items()}, peak)
        if settings.profile:
            pool = [next(batches[method]) for _ in range(min(steps, PROFILED_STEPS))]
            result.operators = [vars(op) for op in top_operators(case, pool, len(pool))]
            result.operator_count = operators_per_step(case, pool[0])
        results.append(result)
    return results
