"""Training FLOPs per sample of one step (`--flops`; the paper's Table 2), for every rule.

Counted by `torch.utils.flop_counter.FlopCounterMode`, which sees matrix products and
convolutions only (2 FLOPs per multiply-add): activations, normalisation, softmax and the
optimizer's elementwise update count 0. The step is the trainer's: the rule's loss (forward,
feedback, layer losses) and its backward pass, then the update (centralisation, clipping, both
SGD steps), counted apart. The MLPs run at the paper's batch of 32, the CNNs at their configs'.
Why each number is what it is: docs/REPRODUCTION.md, "Table 2".

The target-propagation rows (`count_tp_flops`) follow the convention that reproduces the paper's
TP numbers on the FW-DTP code (tests/fixtures/README.md, the golden README's "FLOPs"):
torch.profiler's count of matrix products (2 per multiply-add) plus one FLOP per element of every
`aten::mul` and `aten::add`, over one training iteration (the K feedback calls with their
feedback updates, the targets, the forward losses and their backward), without the forward
weights' SGD update. Ours are smaller than the paper's: the code multiplies by an identity
matrix in every forward map and back-propagates each layer's loss through every layer below it
(quirk Q6), we do neither.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ccl.bench.cases import CASES, REPO_ROOT, build_case, load_config, synthetic_splits
from ccl.optim import DualOptimizer
from ccl.reproduce.paper import TABLE2_MFLOPS
from ccl.rules import RULES

FLOPS_ARCHS = ("mlp_mnist", "mlp_cifar10", "cnn", "cnn_pool")  # the default of --flops
# target propagation runs on configs of its own, counted under the paper's profiler convention
TP_CONFIG_SUFFIX = {"DTP": "dtp", "DRL": "drl", "L-DRL": "ldrl", "FWDTP-BN": "fwdtp_bn", "FW-DTP": "fwdtp"}
# BP first: the yardstick
METHODS = ("BP", *(method for method in RULES if method != "BP" and method not in TP_CONFIG_SUFFIX))
PAPER_BATCH = 32  # Table 2's batch, for the MLPs


@dataclass
class FlopsResult:
    arch: str
    method: str
    batch: int
    loss_flops: int  # forward, feedback and layer losses
    backward_flops: int
    update_flops: int
    feedback_phase_flops: int = 0  # target propagation: the K feedback calls before the step

    @property
    def step_flops(self) -> int:
        return self.feedback_phase_flops + self.loss_flops + self.backward_flops

    def per_sample(self, flops: int) -> float:
        return flops / self.batch / 1e6

    def as_dict(self) -> dict:
        return {"arch": self.arch, "method": self.method, "batch": self.batch,
                "mflops_per_sample": self.per_sample(self.step_flops),
                "feedback_phase_mflops_per_sample": self.per_sample(self.feedback_phase_flops),
                "loss_mflops_per_sample": self.per_sample(self.loss_flops),
                "backward_mflops_per_sample": self.per_sample(self.backward_flops),
                "update_mflops_per_sample": self.per_sample(self.update_flops),
                "paper_mflops_per_sample": TABLE2_MFLOPS.get((self.arch, self.method))}


def counted(function: Callable[[], object]) -> tuple[object, int]:
    """What `function()` returns, and the FLOPs of its products."""
    with FlopCounterMode(display=False) as counter:
        result = function()
    return result, counter.get_total_flops()


def step_flops(loss_function: Callable, optimizer: DualOptimizer, inputs: torch.Tensor,
               targets: torch.Tensor) -> tuple[int, int, int]:
    """(loss, backward, update) FLOPs of one training step on one batch."""
    loss, loss_flops = counted(lambda: loss_function(inputs, targets))
    _, backward_flops = counted(lambda: optimizer.warmup_scaled(loss).backward())
    _, update_flops = counted(optimizer.step)
    return loss_flops, backward_flops, update_flops


def count_architecture(arch: str, overrides: dict, device) -> list[FlopsResult]:
    """One step of every rule the architecture's entry script trains, on synthetic data."""
    results = []
    for method in METHODS:
        changes = {**overrides, "method": method}
        if arch.startswith("mlp"):
            changes["batchsize"] = PAPER_BATCH
        config, script = load_config(CASES[arch], changes)
        if method not in script.methods:
            continue
        batch = config.batchsize
        case = build_case(config, script, synthetic_splits(config.dataset, (batch, 1, 1), device), device)
        inputs, targets = next(iter(case.experiment.data.train.epoch(0)))
        results.append(FlopsResult(arch, method, len(targets),
                                   *step_flops(case.loss, case.optimizer, inputs, targets)))
    return results


def count_flops(archs: Sequence[str], overrides: dict, device) -> list[FlopsResult]:
    return [result for arch in archs for result in count_architecture(arch, overrides, device)]


# --- target propagation, under the paper's profiler convention ------------------------------------

TP_FLOPS_CONFIGS = {"mlp_mnist": "mnist", "mlp_cifar10": "cifar10"}  # arch -> yaml/mlp/ prefix
PROFILED_OPS = ("aten::mm", "aten::mul", "aten::add")


def profiled(function: Callable[[], object]) -> int:
    """torch.profiler's FLOPs of `function()`: its matrix products and elementwise mul and add."""
    with _native_stderr_silenced(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                           with_flops=True) as profile:
        function()
    return sum(event.flops for event in profile.events() if event.name in PROFILED_OPS)


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's native code writes a start and a stop line to the process's stderr for
    every profile; Python's own errors still raise as usual."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as nowhere:
        os.dup2(nowhere.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def count_tp_flops(archs: Sequence[str], device) -> list[FlopsResult]:
    """One training iteration of each TP method at its config (yaml/mlp/*_{dtp,...}.yaml), batch
    32: `loss_flops` the K feedback calls and the forward loss, `backward_flops` its backward;
    the forward SGD update is left out (`update_flops` 0), as the paper's count did."""
    results = []
    for arch in archs:
        if arch not in TP_FLOPS_CONFIGS:
            continue
        for method, suffix in TP_CONFIG_SUFFIX.items():
            path = REPO_ROOT / "yaml" / "mlp" / f"{TP_FLOPS_CONFIGS[arch]}_{suffix}.yaml"
            config, script = load_config(path, {"batchsize": PAPER_BATCH})
            case = build_case(config, script, synthetic_splits(config.dataset, (PAPER_BATCH, 1, 1), device),
                              device)
            inputs, targets = next(iter(case.experiment.data.train.epoch(0)))
            phase = case.experiment.feedback_phase
            feedback_flops = profiled(lambda: phase.step(inputs, targets)) if phase else 0
            holder = []
            loss_flops = profiled(lambda: holder.append(case.loss(inputs, targets)))
            backward_flops = profiled(lambda: holder[0].backward())
            results.append(FlopsResult(arch, method, len(targets), loss_flops, backward_flops, 0,
                                       feedback_flops))
    return results
