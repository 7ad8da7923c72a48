"""Target propagation: the five TP baselines of the paper (DTP, DRL, L-DRL, FW-DTP, FWDTP-BN) as
the official Fixed-Weight Difference Target Propagation code computes them (docs/ALGORITHM.md,
"Target propagation"; its quirks in docs/FIDELITY.md), on a DualNetwork of DualLinear layers:
layer l's forward map is f_l (`layer(a)`, weight W_l) and its feedback map g_l
(`layer.feedback(b)`, weight V_l), from layer l's space back to layer l-1's.

A TP rule has two parts:
- the forward loss (`forward_loss`): the top target t_L = a_L - beta * G (G the gradient of the
  summed cross-entropy at a_L), the local targets t_l = D_{l+1}(g_{l+1}(t_{l+1}); a_l) sent
  down through the difference-corrected feedback maps, and sum_l |t_l - a_l|^2 / N with each
  a_l made from a detached a_{l-1}: only W_l gets layer l's gradient, and SGD at lr_F steps
  W_l - (lr_F / N) dLf_l/dW_l, the code's update;
- the feedback phase (`FeedbackPhase`): K feedback calls before every forward step, and K
  pre-training epochs of one call per batch before the first; a call updates V_L .. V_2 top
  down, each at once, with its method's feedback loss on noisy activations. The noise comes
  from a generator of its own, seeded from the run's seed, whose state the checkpoint keeps.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.layers import DualLayer
from models.network import DualNetwork
from utils.errors import ConfigError
from utils.seed import Stream, stream_seed

# the keys of the feedback phase (the step size tp_step_size is the forward loss's)
PHASE_KEYS = ("tp_noise_std", "tp_feedback_calls", "tp_pretrain_epochs")

Activations = list[torch.Tensor]  # [a_0 = x, a_1, ..., a_L]
# (layer l, site "eps" | "eta", shape) -> a draw of N(0, sigma^2); tests inject recorded draws
NoiseSource = Callable[[int, str, torch.Size], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    """chi of every method but FWDTP-BN: the difference-corrected point as it is."""
    return x


# --- the difference-corrected feedback and the targets ----------------------------------------

def difference_corrected(layer: DualLayer, u: torch.Tensor, reference: torch.Tensor,
                         chi: Callable = identity) -> torch.Tensor:
    """D_l(u; a) = chi(u + (a - g_l(f_l(a)))) for a point u = g_l(s) in layer l-1's space: the
    correction c = a - g_l(f_l(a)) makes D_l(g_l(f_l(a)); a) = a. c carries no gradient, so a
    loss on D_l reaches V_l through u alone (computed in this order, c first, as the code does)."""
    with torch.no_grad():
        correction = reference - layer.feedback(layer(reference))
    return chi(u + correction)


def top_target(logits: torch.Tensor, labels: torch.Tensor, step_size: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t_L = a_L - beta * G, G, the summed cross-entropy) with G = softmax(a_L) - onehot(y), the
    gradient of the cross-entropy summed over the batch at a_L."""
    logits = logits.detach().requires_grad_()
    with torch.enable_grad():
        loss = F.cross_entropy(logits, labels, reduction="sum")
        gradient, = torch.autograd.grad(loss, logits)
    return logits.detach() - step_size * gradient, gradient, loss.detach()


@torch.no_grad()
def local_targets(model: DualNetwork, activations: Activations, top: torch.Tensor,
                  chi: Callable = identity) -> list[torch.Tensor]:
    """[t_1, ..., t_L]: from t_L down, t_l = D_{l+1}(g_{l+1}(t_{l+1}); a_l)."""
    layers = model.layers
    targets = [top]
    for l in range(len(layers) - 1, 0, -1):
        above = layers[l]  # layer l+1
        targets.insert(0, difference_corrected(above, above.feedback(targets[0]), activations[l], chi))
    return targets


@dataclass
class ForwardPass:
    """What the forward loss computed on a batch (the golden tests read all of it)."""

    activations: Activations  # a_0..a_L, each a_l from a detached a_{l-1}
    targets: list[torch.Tensor]  # t_1..t_L
    top_gradient: torch.Tensor  # G
    ce_loss: torch.Tensor  # summed over the batch
    layer_losses: list[torch.Tensor]  # Lf_1..Lf_L, each summed over the batch and units

    @property
    def loss(self) -> torch.Tensor:
        """sum_l Lf_l / N: SGD at lr_F then steps W_l by (lr_F / N) dLf_l/dW_l."""
        return sum(self.layer_losses) / len(self.activations[0])


def forward_pass(model: DualNetwork, inputs: torch.Tensor, labels: torch.Tensor, step_size: float,
                 chi: Callable = identity) -> ForwardPass:
    activations = model(inputs, detach=True)
    values = [a.detach() for a in activations]
    top, gradient, ce_loss = top_target(values[-1], labels, step_size)
    targets = local_targets(model, values, top, chi)
    losses = [F.mse_loss(a, t, reduction="sum") for a, t in zip(activations[1:], targets, strict=True)]
    return ForwardPass(activations, targets, gradient, ce_loss, losses)


def forward_loss(model: DualNetwork, objective, inputs: torch.Tensor, labels: torch.Tensor, *,
                 tp_step_size: float, chi: Callable = identity) -> torch.Tensor:
    """The rule's loss (model, objective, inputs, targets) -> loss: whose backward gives every
    forward weight its layer's target loss gradient / N; the feedback weights get none. The
    top target is the code's summed cross-entropy whatever the objective's loss is."""
    return forward_pass(model, inputs, labels, tp_step_size, chi).loss


# --- the feedback losses (one layer l = 2..L of one call) -------------------------------------

def dtp_loss(layers, l: int, activations: Activations, noise: NoiseSource, chi: Callable) -> torch.Tensor:
    """DTP: q = a_{l-1} + eps; |g_l(f_l(q)) - q|^2, no difference correction (so no chi)."""
    h = activations[l - 1]
    q = h + noise(l, "eps", h.shape)
    layer = layers[l - 1]
    with torch.no_grad():
        forward = layer(q)
    return F.mse_loss(layer.feedback(forward), q, reduction="sum")


def drl_loss(layers, l: int, activations: Activations, noise: NoiseSource, chi: Callable) -> torch.Tensor:
    """DRL: q = a_{l-1} + eps up to the output, back down through D_L .. D_l; |a_{l-1} - p|^2,
    compared with the clean a_{l-1} (quirk Q2). Only V_l's gradient is used, so the way up and
    the feedback maps above l run without a graph."""
    h = activations[l - 1]
    p = h + noise(l, "eps", h.shape)
    with torch.no_grad():
        for layer in layers[l - 1:]:
            p = layer(p)
        for k in range(len(layers), l, -1):
            above = layers[k - 1]
            p = difference_corrected(above, above.feedback(p), activations[k - 1], chi)
    layer = layers[l - 1]
    p = difference_corrected(layer, layer.feedback(p), h, chi)
    return F.mse_loss(h, p, reduction="sum")


def ldrl_loss(layers, l: int, activations: Activations, noise: NoiseSource, chi: Callable) -> torch.Tensor:
    """L-DRL: two draws, eps on a_{l-1} then eta on a_l; q = h + eps,
    -sum((q - h) * (D_l(g_l(f_l(q))) - h)) + |D_l(g_l(f_l(h) + eta)) - h|^2 / 2."""
    h, output = activations[l - 1], activations[l]
    q = h + noise(l, "eps", h.shape)
    eta = noise(l, "eta", output.shape)
    layer = layers[l - 1]
    with torch.no_grad():
        forward = layer(q)
    q_rec = difference_corrected(layer, layer.feedback(forward), h, chi)
    r_rec = difference_corrected(layer, layer.feedback(output + eta), h, chi)
    return -torch.sum((q - h) * (q_rec - h)) + torch.sum((r_rec - h) ** 2) / 2


# FWDTP-BN's layers: phi_l = BN(tanh) for l < L, phi_L = BN, psi = BN(tanh)
BN_LAYERS = {"act_F": "tanh_bn", "act_B": "tanh_bn", "act_F_top": "bn"}


def check_config(config) -> None:
    """The settings a TP run cannot train: a ConfigError that names the fix."""
    if config.fw_bn or config.bw_bn:
        raise ConfigError(f"method {config.method} has no BatchNorm modules (FWDTP-BN's normalisation "
                          f"is an activation): set fw_bn: 0 and bw_bn: 0")
    for key in ("mmt_F", "wd_F", "GradC", "grad_clip_F"):
        if getattr(config, key):
            raise ConfigError(f"method {config.method} trains with plain SGD, as the FW-DTP code does: "
                              f"set {key}: 0")


def check_normalised(config) -> None:
    """FWDTP-BN's: normalised layers throughout, and what every TP run needs."""
    if any(getattr(config, key) != value for key, value in BN_LAYERS.items()):
        raise ConfigError(f"method {config.method} normalises every layer: set "
                          f"{', '.join(f'{key}: {value}' for key, value in BN_LAYERS.items())}")
    check_config(config)


# --- the feedback phase -------------------------------------------------------------------------

@dataclass
class FeedbackStep:
    """One layer's update in a feedback call (the golden tests compare them)."""

    layer: int
    loss: torch.Tensor
    lr: float  # lr_B / N
    grad: torch.Tensor  # dLb_l/dV_l


class FeedbackPhase:
    """The feedback weights' training of DTP, DRL and L-DRL: `step(inputs, targets)` before every
    forward step (K calls on the batch), `pretrain(epochs)` once before the first forward step
    (K epochs of one call per batch), `state_dict()` for the checkpoint.

    `feedback_loss(layers, l, activations, noise, chi)` is the method's Lb_l; `noise`, when
    given, replaces the draws: (layer, site, shape) -> tensor.
    """

    def __init__(self, model: DualNetwork, feedback_loss: Callable, chi: Callable, *, lr: float,
                 noise_std: float, calls: int, pretrain_epochs: int, seed: int,
                 noise: NoiseSource | None = None):
        self.model, self.feedback_loss, self.chi = model, feedback_loss, chi
        self.lr, self.noise_std = lr, noise_std
        self.calls, self.pretrain_epochs = calls, pretrain_epochs
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(stream_seed(seed, Stream.TP_NOISE))
        self.noise = noise or self.draw
        self.pretrained = False

    @classmethod
    def from_config(cls, config, model: DualNetwork, world=None, *, feedback_loss: Callable,
                    chi: Callable = identity, seed: int | None = None, **kwargs) -> "FeedbackPhase":
        if world is not None and world.size > 1:
            raise ConfigError(f"method {config.method} trains in one process: each process would update "
                              f"the feedback weights with its own noise; start it without torchrun")
        return cls(model, feedback_loss, chi, lr=config.lr_B, noise_std=config.tp_noise_std,
                   calls=config.tp_feedback_calls, pretrain_epochs=config.tp_pretrain_epochs,
                   seed=config.seed if seed is None else seed, **kwargs)

    def draw(self, layer: int, site: str, shape: torch.Size) -> torch.Tensor:
        return torch.normal(0.0, self.noise_std, tuple(shape), generator=self.generator,
                            device=self.generator.device)

    def call(self, inputs: torch.Tensor) -> list[FeedbackStep]:
        """One feedback call: a forward pass, then for l = L .. 2 the feedback loss Lb_l and at
        once V_l <- V_l - (lr_B / N) dLb_l/dV_l (the layers above l already updated)."""
        layers = self.model.layers
        with torch.no_grad():
            activations = self.model(inputs)
        lr = self.lr / len(inputs)
        steps = []
        for l in range(len(layers), 1, -1):
            weight = layers[l - 1].bwd.weight
            with torch.enable_grad():
                loss = self.feedback_loss(layers, l, activations, self.noise, self.chi)
                grad, = torch.autograd.grad(loss, weight)
            with torch.no_grad():
                weight.sub_(lr * grad)
            steps.append(FeedbackStep(l, loss.detach(), lr, grad))
        return steps

    def step(self, inputs: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """The K feedback calls before a forward step on this batch."""
        for _ in range(self.calls):
            self.call(inputs)

    def pretrain(self, epoch_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """K epochs of one feedback call per training batch, before any forward training;
        `epoch_batches(k)` gives epoch k's batches. Done once per run: `pretrained` records it."""
        for epoch in range(self.pretrain_epochs):
            for inputs, _ in epoch_batches(epoch):
                self.call(inputs)
        self.pretrained = True

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "pretrained": self.pretrained}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.pretrained = state["pretrained"]
