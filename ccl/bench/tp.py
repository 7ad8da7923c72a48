"""`python -m ccl.bench --tp`: the training step of each target-propagation rule against BP's,
and what a full Table 1 row of it costs on this device.

Each rule trains its own config (yaml/mlp/<dataset>_<rule>.yaml; BP: <dataset>_bp.yaml at the
TP configs' batch), on synthetic images held on the device, through the trainer's own step
(`train_step`: the feedback phase's K calls, the loss, `backward()`, the update). The rules take
turns repeat by repeat, so a change in the machine's load hits them all. A row's cost: 5 seeds x
(the config's epochs of steps, plus the feedback pre-training: K epochs of one call per batch).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ccl.bench.cases import Case, build_case, load_config, official_split_sizes, synthetic_splits
from ccl.bench.clock import Clock
from ccl.bench.flops import TP_CONFIG_SUFFIX, TP_FLOPS_CONFIGS
from ccl.bench.steps import POOL_BATCHES, time_steps
from utils.provenance import REPO_ROOT

SEEDS_PER_ROW = 5
BASELINE = "BP"


@dataclass
class TPStepResult:
    arch: str
    method: str
    batch_size: int
    repeat_ms: list[float]  # mean step time of each repeat
    feedback_call_ms: float  # one feedback call (0 for the rules without a feedback phase)
    steps_per_epoch: int
    epochs: int
    pretrain_epochs: int

    @property
    def step_ms(self) -> float:
        return statistics.median(self.repeat_ms)

    @property
    def row_hours(self) -> float:
        """5 seeds of the config's epochs, the feedback pre-training included."""
        steps = self.steps_per_epoch * (self.epochs * self.step_ms + self.pretrain_epochs * self.feedback_call_ms)
        return SEEDS_PER_ROW * steps / 1000 / 3600

    def as_dict(self) -> dict:
        return {**vars(self), "step_ms": self.step_ms, "row_hours": self.row_hours}


def tp_cases(arch: str, device, batch: int | None = None) -> dict[str, Case]:
    """BP and every TP rule on the architecture's dataset, each on its own config."""
    prefix = TP_FLOPS_CONFIGS[arch]
    batch = batch or load_config(REPO_ROOT / f"yaml/mlp/{prefix}_drl.yaml", {})[0].batchsize
    cases = {}
    for method, suffix in {BASELINE: "bp", **TP_CONFIG_SUFFIX}.items():
        config, script = load_config(REPO_ROOT / f"yaml/mlp/{prefix}_{suffix}.yaml", {"batchsize": batch})
        size = config.batchsize
        cases[method] = build_case(config, script, synthetic_splits(config.dataset, (POOL_BATCHES * size,
                                                                                     size, size), device), device)
    return cases


def feedback_call_ms(case: Case, inputs, clock: Clock, calls: int) -> float:
    phase = case.experiment.feedback_phase
    if phase is None:
        return 0.0
    clock.sync()
    start = clock.mark()
    for _ in range(calls):
        phase.call(inputs)
    end = clock.mark()
    clock.sync()
    return clock.seconds(start, end) / calls * 1000


def time_tp_steps(arch: str, device, repeats: int, steps: int, warmup: int,
                  batch: int | None = None) -> list[TPStepResult]:
    clock = Clock(device)
    cases = tp_cases(arch, device, batch)
    pools = {method: list(case.experiment.data.train.epoch(0))[:POOL_BATCHES] for method, case in cases.items()}
    for method, case in cases.items():
        time_steps(case, pools[method], clock, warmup)  # kernel loading
    times = {method: [] for method in cases}
    for _ in range(repeats):
        for method, case in cases.items():
            times[method].append(time_steps(case, pools[method], clock, steps) * 1000)
    results = []
    for method, case in cases.items():
        config = case.config
        train_size = official_split_sizes(config.dataset)[0]
        results.append(TPStepResult(arch, method, config.batchsize, times[method],
                                    feedback_call_ms(case, pools[method][0][0], clock, steps),
                                    math.ceil(train_size / config.batchsize), config.epochs,
                                    config.tp_pretrain_epochs if case.experiment.feedback_phase else 0))
    return results
