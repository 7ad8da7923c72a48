"""The operations that take a step's time (`--profile`): torch.profiler over a few steps, the
operators grouped by name and input shapes, ranked by their own time on the device (the
CPU's time on a CPU); and how many operators a step dispatches, forward and backward (each one
a kernel launch on a GPU, whose cost in small steps is the launch, not the work)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from ccl.bench.cases import Case

TOP_OPERATORS = 12


@dataclass
class OperatorTime:
    name: str
    shapes: str
    calls_per_step: float
    ms_per_step: float


def top_operators(case: Case, pool: list, steps: int) -> list[OperatorTime]:
    device = next(case.model.parameters()).device
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as profiler:
        for index in range(steps):
            case.step(*pool[index % len(pool)])
        if cuda:
            torch.cuda.synchronize(device)

    def own_time(event) -> float:  # microseconds
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    events = [e for e in profiler.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")]
    events.sort(key=own_time, reverse=True)
    return [OperatorTime(e.key, str(e.input_shapes), e.count / steps, own_time(e) / 1000 / steps)
            for e in events[:TOP_OPERATORS]]


class _OperatorCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:  # views only relabel memory: no kernel
            self.count += 1
        return func(*args, **(kwargs or {}))


def operators_per_step(case: Case, batch) -> int | None:
    """The aten operators one step dispatches, views excepted; None for a compiled step (its
    kernels bypass the dispatcher)."""
    if case.config.compile:
        return None
    with _OperatorCounter() as counter:
        case.step(*batch)
    return counter.count
