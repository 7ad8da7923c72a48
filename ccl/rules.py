"""The learning rules, generic over dual networks and objectives.

A rule maps (model, objective, inputs, targets) to the loss whose backward pass gives every
parameter its gradient; the trainer then calls `backward()` on it and `DualOptimizer.step()`.
"""
from __future__ import annotations

import torch

from models.network import DualNetwork


def ccl_loss(model: DualNetwork, objective, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Counter-current learning: both networks run with every layer input detached, so the
    sum of pair losses gives each map only the gradient of its own pair."""
    activations = model(inputs, detach=True)
    signals = model.feedback(objective.feedback_input(targets), detach=True)
    return objective.local_losses(activations, signals, targets)


def bp_loss(model: DualNetwork, objective, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Backpropagation through the forward network alone; the feedback network stays idle."""
    return objective.output_loss(model.predict(inputs), targets)


RULES = {"CCL": ccl_loss, "BP": bp_loss}
