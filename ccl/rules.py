"""The learning rules, generic over dual networks and objectives: counter-current learning,
backprop and three baselines that send fixed random feedback (ccl/fixed_feedback.py).

A rule maps (model, objective, inputs, targets) to the loss whose backward pass gives every
parameter its gradient; the trainer then calls `backward()` on it and `DualOptimizer.step()`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ccl.fixed_feedback import add_direct_feedback, direct_feedback, feedback_aligned, signal_at
from ccl.objectives import in_order_sum
from models.network import DualNetwork


def ccl_loss_terms(model: DualNetwork, objective, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Counter-current learning's loss as its terms (`objective.loss_terms`, named by
    `objective.term_names`): both networks run with every layer input detached, so each term
    gives each map only the gradient of its own pair."""
    activations = model(inputs, detach=True)
    signals = model.feedback(objective.feedback_input(targets), detach=True)
    return objective.loss_terms(activations, signals, targets)


def ccl_loss(model: DualNetwork, objective, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Counter-current learning: the sum of the pair losses and the output loss."""
    return in_order_sum(ccl_loss_terms(model, objective, inputs, targets))


def bp_loss(model: DualNetwork, objective, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Backpropagation through the forward network alone; the feedback network stays idle."""
    return objective.output_loss(model.predict(inputs), targets)


def fa_loss(model: DualNetwork, objective, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Feedback alignment (Lillicrap et al. 2016): backprop through the forward network, each
    map sending the error down through its layer's fixed feedback weight instead of its own
    transpose."""
    with feedback_aligned(model):
        return objective.output_loss(model.predict(inputs), targets)


def output_error(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """softmax(logits) - one-hot, over N: the gradient of the mean cross-entropy at the logits,
    so the hidden layers' signals have the scale of backprop's gradients."""
    probabilities = logits.detach().softmax(dim=1)
    return (probabilities - F.one_hot(labels, logits.shape[1]).to(probabilities.dtype)) / len(labels)


def projected_errors(logits: torch.Tensor, labels: torch.Tensor,
                     projections: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """DFA's signals: the output error through each hidden layer's matrix, e @ B_l."""
    error = output_error(logits, labels)
    return [error @ projection for projection in projections]


def projected_targets(logits: torch.Tensor, labels: torch.Tensor,
                      projections: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """DRTP's signals: the one-hot targets over N through each hidden layer's matrix,
    (one-hot / N) @ B_l, which is the row of B_l each label picks: no multiplication."""
    return [projection[labels] / len(labels) for projection in projections]


def _direct_loss(model: DualNetwork, objective, inputs: torch.Tensor, labels: torch.Tensor,
                 project) -> torch.Tensor:
    """The output loss, and at the output of every hidden layer the gradient that
    `project(logits, labels, projections)` gives it. Every layer input is detached: no signal
    crosses a layer."""
    activations = model(inputs, detach=True)
    logits = activations[-1]
    signals = project(logits, labels, direct_feedback(model))
    hidden = zip(activations[1:-1], signals, strict=True)
    return objective.output_loss(logits, labels) + sum(signal_at(output, signal) for output, signal in hidden)


def dfa_loss(model: DualNetwork, objective, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Direct feedback alignment (Nokland 2016): each hidden layer receives the output error
    through its own fixed random matrix."""
    return _direct_loss(model, objective, inputs, labels, projected_errors)


def drtp_loss(model: DualNetwork, objective, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Direct random target projection (Frenkel et al. 2021): each hidden layer receives the
    one-hot target itself through its own fixed random matrix, as its gradient (the sign of the
    authors' code): no error, so no wait for the output."""
    return _direct_loss(model, objective, inputs, labels, projected_targets)


RULES = {"BP": bp_loss, "CCL": ccl_loss, "FA": fa_loss, "DFA": dfa_loss, "DRTP": drtp_loss}
# the rules whose loss the trainer logs term by term (per pair): the terms, whose in_order_sum is the loss
LOSS_TERMS = {ccl_loss: ccl_loss_terms}
DIRECT_RULES = ("DFA", "DRTP")  # the rules that read fixed projections the model must carry
FIXED_FEEDBACK_RULES = ("FA", *DIRECT_RULES)  # the rules under which the feedback network never trains


def add_fixed_feedback(config, model: DualNetwork, input_shape: Sequence[int], num_classes: int) -> None:
    """Give a freshly built model the fixed matrices its rule reads, drawn from the run's seed
    (DFA, DRTP). The other rules need none: FA reads the feedback network's own weights."""
    if config.method in DIRECT_RULES:
        add_direct_feedback(model, input_shape, num_classes, config.seed)
