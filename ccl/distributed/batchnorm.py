"""BatchNorm over the global batch when every rank holds a slice of it.

torch.nn.SyncBatchNorm does this for GPUs only; this one runs wherever the process group does
(gloo on the CPU, NCCL on CUDA), with the same state dict as the BatchNorm it replaces.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ccl.distributed import World


class SyncedBatchNorm(_BatchNorm):
    """In training mode, normalises with the mean and (biased) variance of the global batch and
    updates the running statistics with them (the variance unbiased over the global count), as
    one process's BatchNorm over the whole batch does. Each rank's per-channel mean and sum of
    squared deviations are gathered, differentiably, and combined by the parallel-variance formula
    (no cancellation); the gradients of the normalisation then reach every rank's samples. In
    evaluation mode, or for a batch every rank holds whole, it is the plain BatchNorm."""

    def __init__(self, bn: _BatchNorm, world: World):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.to(bn.running_mean.device if bn.running_mean is not None else "cpu")
        self.world = world

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.world.whole_batch:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = x.float()  # statistics in float32 under bf16 autocast too, as F.batch_norm keeps them
        count = local.numel() // local.shape[1]  # equal on every rank: equal slices, equal maps
        mean = local.mean(dims)
        squares = (local - mean.view(shape)).square().sum(dims)
        gathered, _ = self.world.gather_rows(torch.stack((mean, squares)))
        means, squares = gathered.view(self.world.size, 2, -1).unbind(1)
        global_mean = means.mean(0)
        total = count * self.world.size
        global_squares = squares.sum(0) + count * (means - global_mean).square().sum(0)
        if self.track_running_stats:
            self._update_running_stats(global_mean, global_squares / (total - 1))
        y = (local - global_mean.view(shape)) * torch.rsqrt(global_squares / total + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_variance: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_variance.to(self.running_var.dtype), factor)


def synchronise_batch_norm(model: nn.Module, world: World, feedback: bool) -> None:
    """Make the forward maps' BatchNorms (and the feedback maps', when `feedback`: the feedback
    network then reads the batch's samples too) normalise over the global batch. A classification
    feedback network reads the same class one-hots on every rank: its BatchNorms already see all
    there is, and syncing them would count each class once per rank in the running variance."""
    if world.size == 1:
        return
    for layer in model.layers:
        if layer.fwd_bn is not None:
            layer.fwd_bn = SyncedBatchNorm(layer.fwd_bn, world)
        if feedback and layer.bwd_bn is not None:
            layer.bwd_bn = SyncedBatchNorm(layer.bwd_bn, world)
