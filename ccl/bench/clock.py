"""Time and memory on one device, measured from outside the training code.

On CUDA, marks are events recorded into the stream (the host never waits for them) and peak
memory comes from the caching allocator; on the CPU, marks are `perf_counter` readings (CPU
kernels finish before the call returns) and peak memory is not measured. Only `sync` waits.
"""
from __future__ import annotations

import time

import torch


class Clock:
    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._base = 0  # bytes allocated when the peak was last reset

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def mark(self):
        """A point in the device's timeline."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def seconds(self, start, end) -> float:
        """Seconds from mark `start` to mark `end`; on CUDA, after a `sync`."""
        return start.elapsed_time(end) / 1000 if self.cuda else end - start

    def start_peak_memory(self) -> None:
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)

    def peak_memory_bytes(self) -> int | None:
        """The most memory allocated since `start_peak_memory` beyond what was allocated then
        (None on the CPU)."""
        if not self.cuda:
            return None
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) - self._base


def state_bytes(case) -> int:
    """Bytes of a case's model (parameters, buffers) and optimizer state (momentum buffers)."""
    tensors = [*case.model.parameters(), *case.model.buffers()]
    for sgd in (case.optimizer.forward_sgd, case.optimizer.feedback_sgd):
        tensors += [value for state in sgd.state.values() for value in state.values()
                    if isinstance(value, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)
