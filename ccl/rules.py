"""The learning rules, generic over dual networks and objectives: counter-current learning,
backprop and three baselines that send fixed random feedback (ccl/fixed_feedback.py).

A rule is one `Rule` record in `RULES`: its loss, which maps (model, objective, inputs,
targets) to the loss whose backward pass gives every parameter its gradient (the training step,
`ccl.trainer.train_step`, calls `backward()` on it and `DualOptimizer.step()`), and what the
rest of the code needs to know about it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ccl.fixed_feedback import add_direct_feedback, direct_feedback, feedback_aligned, gradient_at
from models.network import DualNetwork

# (model, objective, inputs, targets) -> the loss whose backward pass gives the gradients
RuleLoss = Callable[[DualNetwork, object, torch.Tensor, torch.Tensor], torch.Tensor]


def ccl_loss(model: DualNetwork, objective, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Counter-current learning: both networks run with every layer input detached, so the
    sum of pair losses gives each map only the gradient of its own pair."""
    activations = model(inputs, detach=True)
    signals = model.feedback(objective.feedback_input(targets), detach=True)
    return objective.local_losses(activations, signals, targets)


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
    so the gradients DFA gives the hidden layers have the scale of backprop's gradients."""
    probabilities = logits.detach().softmax(dim=1)
    return (probabilities - F.one_hot(labels, logits.shape[1]).to(probabilities.dtype)) / len(labels)


def projected_errors(logits: torch.Tensor, labels: torch.Tensor,
                     projections: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients DFA gives the hidden layers: the output error through each hidden layer's matrix, e @ B_l."""
    error = output_error(logits, labels)
    return [error @ projection for projection in projections]


def projected_targets(logits: torch.Tensor, labels: torch.Tensor,
                      projections: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The gradients DRTP gives the hidden layers: the one-hot targets over N through each hidden layer's matrix,
    (one-hot / N) @ B_l, which is the row of B_l each label picks: no multiplication."""
    return [projection[labels] / len(labels) for projection in projections]


def _direct_loss(model: DualNetwork, objective, inputs: torch.Tensor, labels: torch.Tensor,
                 project) -> torch.Tensor:
    """The output loss, and at the output of every hidden layer the gradient that
    `project(logits, labels, projections)` gives it. Every layer input is detached: no gradient
    crosses a layer."""
    activations = model(inputs, detach=True)
    logits = activations[-1]
    gradients = project(logits, labels, direct_feedback(model))
    hidden = zip(activations[1:-1], gradients, strict=True)
    return objective.output_loss(logits, labels) + sum(gradient_at(output, gradient)
                                                       for output, gradient in hidden)


def dfa_loss(model: DualNetwork, objective, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Direct feedback alignment (Nokland 2016): each hidden layer receives the output error
    through its own fixed random matrix."""
    return _direct_loss(model, objective, inputs, labels, projected_errors)


def drtp_loss(model: DualNetwork, objective, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Direct random target projection (Frenkel et al. 2021): each hidden layer receives the
    one-hot target itself through its own fixed random matrix, as its gradient (the sign of the
    authors' code): no error, so no wait for the output."""
    return _direct_loss(model, objective, inputs, labels, projected_targets)


# How a rule treats the feedback network's parameters:
FEEDBACK_BY_PAIR_LOSSES = "trained by its pair losses"  # the loss's gradient reaches them (CCL)
FEEDBACK_IDLE = "idle"  # never read, never trained (BP)
FEEDBACK_FIXED = "fixed"  # read as fixed random feedback, never trained (FA, DFA, DRTP)


@dataclass(frozen=True)
class Rule:
    """A learning rule, whole: everything the rest of the code asks about a rule is read here,
    never from its name. Adding a rule is adding one entry to `RULES`.

    `loss(model, objective, inputs, targets)` is the loss whose `backward()` gives every
    parameter the rule trains its gradient; `feedback` says what becomes of the feedback
    network (one of the FEEDBACK_* above); `reads` names the config keys that this rule reads
    and the others ignore (a value other than the key's default under another rule is warned
    about); `compiles` whether torch.compile can trace its loss; `fixed_state(model,
    input_shape, num_classes, seed)` gives a freshly built model the fixed tensors the rule
    reads, drawn from the run's seed."""

    name: str
    summary: str  # one line, for --help
    loss: RuleLoss
    feedback: str
    reads: tuple[str, ...] = ()
    compiles: bool = True
    fixed_state: Callable[[DualNetwork, Sequence[int], int, int], None] | None = None

    @property
    def trains_feedback(self) -> bool:
        return self.feedback == FEEDBACK_BY_PAIR_LOSSES


RULES = {rule.name: rule for rule in (
    Rule("BP", "backpropagation", bp_loss, FEEDBACK_IDLE),
    Rule("CCL", "counter-current learning", ccl_loss, FEEDBACK_BY_PAIR_LOSSES,
         reads=("filter_target", "fused_pair_loss")),
    Rule("FA", "feedback alignment", fa_loss, FEEDBACK_FIXED,
         compiles=False),  # each step swaps the forward maps for ones with fixed feedback
    Rule("DFA", "direct feedback alignment", dfa_loss, FEEDBACK_FIXED, fixed_state=add_direct_feedback),
    Rule("DRTP", "direct random target projection", drtp_loss, FEEDBACK_FIXED,
         fixed_state=add_direct_feedback),
)}


def rule_keys() -> dict[str, tuple[str, ...]]:
    """Each key some rule reads -> the rules that read it."""
    readers: dict[str, tuple[str, ...]] = {}
    for rule in RULES.values():
        for key in rule.reads:
            readers[key] = (*readers.get(key, ()), rule.name)
    return readers


def rule_names(methods: Sequence[str] = tuple(RULES)) -> str:
    """'BP (backpropagation), CCL (counter-current learning), ...' for help texts."""
    return ", ".join(f"{name} ({RULES[name].summary})" for name in methods)


def add_fixed_state(rule: Rule, model: DualNetwork, input_shape: Sequence[int], num_classes: int,
                    seed: int) -> None:
    """Give a freshly built model the fixed tensors its rule reads (DFA's, DRTP's matrices)."""
    if rule.fixed_state is not None:
        rule.fixed_state(model, input_shape, num_classes, seed)
