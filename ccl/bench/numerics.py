"""How far the speed-ups move the numbers (`--numerics`): a few CCL steps of an architecture's
config from the same initial weights on the same batches, with the default float32 step and
with the chosen speed-ups. The default step is also run twice: on a GPU some kernels are not
bit-reproducible, and that run-to-run difference is the yardstick."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

import torch

from ccl.acceleration import without_speed_ups
from ccl.bench.cases import CASES, build_case, load_config, synthetic_splits

STEPS = 10


@dataclass
class Trajectory:
    initial: list[torch.Tensor]
    first: list[torch.Tensor]  # after the first step
    final: list[torch.Tensor]
    losses: list[float]


def train(config, script, splits, device, steps: int) -> Trajectory:
    case = build_case(config, script, splits, device)  # seeded: the same initial weights

    def parameters():
        return [p.detach().clone() for p in case.model.parameters()]

    initial, first, losses = parameters(), None, []
    for inputs, targets in islice(case.experiment.data.train.epoch(0), steps):
        losses.append(case.step(inputs, targets).item())
        first = first or parameters()
    return Trajectory(initial, first, parameters(), losses)


def difference(reference: Trajectory, other: Trajectory) -> dict[str, float]:
    """The largest relative differences of a parameter tensor after the first and after the
    last step (against how far that step or training moved it), and of a step's loss. The
    first step shows the step's own error; later steps add how training amplifies it."""
    def parameters(start, ours, theirs):
        return max(((b - a).norm() / (a - s).norm()).item()
                   for s, a, b in zip(start, ours, theirs) if (a - s).norm() > 0)

    return {"first_step": parameters(reference.initial, reference.first, other.first),
            "parameters": parameters(reference.initial, reference.final, other.final),
            "loss": max(abs(y - x) / abs(x) for x, y in zip(reference.losses, other.losses))}


def compare(arch: str, overrides: dict, device, steps: int) -> dict:
    """The architecture's CCL config with `overrides` (the speed-ups) against the default step."""
    config, script = load_config(CASES[arch], {**overrides, "method": "CCL"})
    default = without_speed_ups(config)
    batch = config.batchsize
    splits = synthetic_splits(config.dataset, (steps * batch, batch, batch), device)
    reference = train(default, script, splits, device, steps)
    return {"arch": arch, "steps": steps,
            "float32_again": difference(reference, train(default, script, splits, device, steps)),
            "speed_ups": difference(reference, train(config, script, splits, device, steps))}
