"""The update shared by every rule: two SGD optimizers (forward and feedback parameters) and
what the released code does between the loss and the step (docs/ALGORITHM.md section 7)."""
from __future__ import annotations

import torch
from torch.nn.utils import clip_grad_norm_
from torch.optim import SGD
from torch.optim.lr_scheduler import CosineAnnealingLR

from models.network import DualNetwork


def centralise_gradients(parameters) -> None:
    """Gradient centralisation: subtract from every weight gradient its mean over all but the
    output dimension. Biases (1-D) are left alone. One fused subtraction for all of them."""
    grads = [p.grad for p in parameters if p.grad is not None and p.grad.dim() > 1]
    if grads:
        means = [g.mean(dim=tuple(range(1, g.dim())), keepdim=True) for g in grads]
        torch._foreach_sub_(grads, means)


class DualOptimizer:
    """Two SGDs, one for the forward and one for the feedback parameters, and what the
    released code does around them. The training step (`ccl.trainer.train_step`) scales the
    loss during the warm-up (`warmup_scaled`), calls `backward()` on it and then `step()`:
    centralise, clip each network's gradients, both SGD steps. `end_epoch()` steps the cosine
    schedules. `steps_taken` counts optimizer steps over
    the whole run; warm-up reads it.
    """

    def __init__(self, model: DualNetwork, config):
        self.forward_params = model.forward_parameters()
        self.feedback_params = model.feedback_parameters()
        self.parameters = self.forward_params + self.feedback_params
        self.forward_sgd = SGD(self.forward_params, lr=config.lr_F, momentum=config.mmt_F,
                               weight_decay=config.wd_F)
        self.feedback_sgd = SGD(self.feedback_params, lr=config.lr_B, momentum=config.mmt_B,
                                weight_decay=config.wd_B)
        self.schedulers = []
        if config.tmax:
            self.schedulers = [CosineAnnealingLR(sgd, T_max=config.tmax, eta_min=config.eta_min)
                               for sgd in (self.forward_sgd, self.feedback_sgd)]
        self.warmup = config.warmup
        self.warmup_per_epoch = config.warmup_counter == "batch_in_epoch"
        self.centralise = bool(config.GradC)
        self.grad_clip_F = config.grad_clip_F
        self.grad_clip_B = config.grad_clip_B
        self.steps_taken = 0

    def warmup_factor(self, batch_in_epoch: int = 0) -> float:
        """(i + 1) / warmup while fewer than `warmup` steps were taken; i counts the global
        steps, or (`warmup_counter: batch_in_epoch`, as released) the batches of this epoch."""
        if self.steps_taken >= self.warmup:
            return 1.0
        counter = batch_in_epoch if self.warmup_per_epoch else self.steps_taken
        return (counter + 1) / self.warmup

    def warmup_scaled(self, loss: torch.Tensor, batch_in_epoch: int = 0) -> torch.Tensor:
        """The loss whose gradients this step applies: scaled down during the warm-up."""
        factor = self.warmup_factor(batch_in_epoch)
        return loss if factor == 1.0 else loss * factor  # x * 1.0 is x: skip the kernel

    def step(self) -> None:
        """Centralise, clip, step both SGDs and clear the gradients."""
        if self.centralise:
            centralise_gradients(self.parameters)
        if self.grad_clip_F > 0:
            clip_grad_norm_(self.forward_params, self.grad_clip_F)
        if self.grad_clip_B > 0:
            clip_grad_norm_(self.feedback_params, self.grad_clip_B)
        for sgd in (self.forward_sgd, self.feedback_sgd):
            sgd.step()
            sgd.zero_grad(set_to_none=True)
        self.steps_taken += 1

    def end_epoch(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        return {"lr_F": self.forward_sgd.param_groups[0]["lr"],
                "lr_B": self.feedback_sgd.param_groups[0]["lr"]}

    def state_dict(self) -> dict:
        return {"forward_sgd": self.forward_sgd.state_dict(),
                "feedback_sgd": self.feedback_sgd.state_dict(),
                "schedulers": [s.state_dict() for s in self.schedulers],
                "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict) -> None:
        self.forward_sgd.load_state_dict(state["forward_sgd"])
        self.feedback_sgd.load_state_dict(state["feedback_sgd"])
        for scheduler, scheduler_state in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(scheduler_state)
        self.steps_taken = state["steps_taken"]
