"""The learning rules, generic over dual networks and objectives: counter-current learning,
backprop, three baselines that send fixed random feedback (ccl/fixed_feedback.py) and the five
target-propagation baselines (ccl/target_prop.py).

A rule is one `Rule` record in `RULES`: its loss, which maps (model, objective, inputs,
targets) to the loss whose backward pass gives every parameter its gradient (the training step,
`ccl.trainer.train_step`, calls `backward()` on it and `DualOptimizer.step()`), and what the
rest of the code needs to know about it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ccl import target_prop as tp
from ccl.fixed_feedback import add_direct_feedback, direct_feedback, feedback_aligned, gradient_at
from ccl.objectives import in_order_sum
from models.layers import batch_standardise
from models.network import DualNetwork

# (model, objective, inputs, targets) -> the loss whose backward pass gives the gradients
RuleLoss = Callable[[DualNetwork, object, torch.Tensor, torch.Tensor], torch.Tensor]


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


# What becomes of the feedback network's parameters under a rule:
FEEDBACK_BY_PAIR_LOSSES = "trained by its pair losses"  # the loss's gradient reaches them (CCL)
FEEDBACK_BY_PHASE = "trained in a phase of its own"  # before each step (DTP, DRL, L-DRL)
FEEDBACK_IDLE = "idle"  # never read, never trained (BP)
FEEDBACK_FIXED = "fixed"  # read as fixed random feedback, never trained (FA, DFA, DRTP, FW-DTP)


@dataclass(frozen=True)
class Rule:
    """A learning rule, whole: everything the rest of the code asks about a rule is read here,
    never from its name. Adding a rule is adding one entry to `RULES`.

    `loss(model, objective, inputs, targets, **settings)` is the loss whose `backward()` gives
    every forward parameter the rule trains its gradient, the config keys of `loss_settings`
    passed to it by name (`loss_of(config)`); `loss_terms`, the same loss as a vector of terms
    (the objective's `term_names`) whose `in_order_sum` it is, logged one by one per epoch; `feedback` says what becomes of the feedback
    network (one of the FEEDBACK_* above), and `feedback_phase(config, model, world)` builds the
    phase that trains it (FEEDBACK_BY_PHASE: `step(inputs, targets)` before each training step,
    `pretrain(epoch_batches)` once before the first, `state_dict()` for the checkpoint); `reads`
    names the config keys that this rule reads and the others ignore (a value other than the
    key's default under another rule is warned about); `compiles` whether torch.compile can
    trace its loss; `linear_only` whether it trains stacks of dual linear layers (the MLPs)
    only; `fixed_state(model, input_shape, num_classes, seed)` gives a freshly built
    model the fixed tensors the rule reads, drawn from the run's seed; `check(config)` refuses
    (ConfigError) the settings the rule cannot train."""

    name: str
    summary: str  # one line, for --help
    loss: Callable[..., torch.Tensor]
    feedback: str
    loss_terms: Callable[..., torch.Tensor] | None = None
    reads: tuple[str, ...] = ()
    loss_settings: tuple[str, ...] = ()
    compiles: bool = True
    linear_only: bool = False
    fixed_state: Callable[[DualNetwork, Sequence[int], int, int], None] | None = None
    feedback_phase: Callable[..., "tp.FeedbackPhase"] | None = None
    check: Callable[..., None] | None = None

    @property
    def trains_feedback(self) -> bool:
        return self.feedback in (FEEDBACK_BY_PAIR_LOSSES, FEEDBACK_BY_PHASE)

    def loss_of(self, config, as_terms: bool = False) -> RuleLoss:
        """The loss `(model, objective, inputs, targets) -> loss` with the config's settings;
        `as_terms`: its terms, where the rule has them."""
        loss = self.loss_terms if as_terms and self.loss_terms is not None else self.loss
        if not self.loss_settings:
            return loss
        return partial(loss, **{name: getattr(config, name) for name in self.loss_settings})


def _target_propagation(name: str, summary: str, feedback_loss, normalised: bool = False) -> Rule:
    """A target-propagation rule (ccl/target_prop.py): the forward loss toward targets sent down
    the feedback network, which trains in a phase of its own with `feedback_loss` (None: fixed
    feedback). `normalised`: FWDTP-BN's parameter-free batch normalisation."""
    chi = batch_standardise if normalised else tp.identity
    trained = feedback_loss is not None
    return Rule(name, summary, partial(tp.forward_loss, chi=chi),
                FEEDBACK_BY_PHASE if trained else FEEDBACK_FIXED,
                reads=tp.PHASE_KEYS + ("tp_step_size",) if trained else ("tp_step_size",),
                loss_settings=("tp_step_size",),
                compiles=False,  # its feedback phase runs outside the compiled loss
                linear_only=True,
                feedback_phase=partial(tp.FeedbackPhase.from_config, feedback_loss=feedback_loss, chi=chi)
                if trained else None,
                check=tp.check_normalised if normalised else tp.check_config)


RULES = {rule.name: rule for rule in (
    Rule("BP", "backpropagation", bp_loss, FEEDBACK_IDLE),
    Rule("CCL", "counter-current learning", ccl_loss, FEEDBACK_BY_PAIR_LOSSES, loss_terms=ccl_loss_terms,
         reads=("filter_target", "fused_pair_loss")),
    Rule("FA", "feedback alignment", fa_loss, FEEDBACK_FIXED,
         compiles=False),  # each step swaps the forward maps for ones with fixed feedback
    Rule("DFA", "direct feedback alignment", dfa_loss, FEEDBACK_FIXED, fixed_state=add_direct_feedback),
    Rule("DRTP", "direct random target projection", drtp_loss, FEEDBACK_FIXED,
         fixed_state=add_direct_feedback),
    _target_propagation("DTP", "difference target propagation", tp.dtp_loss),
    _target_propagation("DRL", "DTP with the difference reconstruction loss", tp.drl_loss),
    _target_propagation("L-DRL", "DTP with the local difference reconstruction loss", tp.ldrl_loss),
    _target_propagation("FW-DTP", "fixed-weight difference target propagation", None),
    _target_propagation("FWDTP-BN", "FW-DTP with parameter-free batch normalisation", None, normalised=True),
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
