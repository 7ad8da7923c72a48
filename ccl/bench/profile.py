"""The operations that take a step's time (`--profile`): torch.profiler over a few steps, the
operators grouped by name and input shapes, ranked by their own time on the device (the
CPU's time on a CPU)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from ccl.bench.cases import Case

TOP_OPERATORS = 12


@dataclass
class OperatorTime:
    name: str
    shapes: str
    calls_per_step: float
    ms_per_step: float


def top_operators(case: Case, pool: list, steps: int) -> list[OperatorTime]:
    cuda = next(case.model.parameters()).is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as profiler:
        for index in range(steps):
            case.step(*pool[index % len(pool)])
        if cuda:
            torch.cuda.synchronize()

    def own_time(event) -> float:  # microseconds
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    events = [e for e in profiler.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")]
    events.sort(key=own_time, reverse=True)
    return [OperatorTime(e.key, str(e.input_shapes), e.count / steps, own_time(e) / 1000 / steps)
            for e in events[:TOP_OPERATORS]]
