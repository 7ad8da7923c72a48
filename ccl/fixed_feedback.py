"""Fixed random feedback: the matrices through which the three baseline rules (FA, DFA, DRTP,
ccl/rules.py) send errors backwards instead of the transposed forward weights.

Feedback alignment (FA) backpropagates through the forward network, but every forward map hands
the error to its input through a fixed matrix V in place of its own transposed weight W^T. V is
the weight of the same layer's feedback map (`bwd`), which already has W^T's shape; under FA the
feedback network never trains, so V keeps its initial draw (PyTorch's default init, made with the
rest of the model from the run's seed). The substitution happens in the backward pass of a
custom autograd Function per map, so the models' forward code runs unchanged:

    linear (W: out x in, V: in x out)   grad_input = grad_output @ V^T
    conv   (W: out x in x k x k, V: in x out x k x k)
           grad_input = conv_transpose2d(grad_output, V.transpose(0, 1).flip(2, 3), same stride and
                        padding, the output_padding that restores the input's size)

When V is W's exact adjoint (linear: V = W^T; conv: V = W.transpose(0, 1).flip(2, 3), for which
conv2d(., V) equals conv_transpose2d(., W) at stride 1, padding 1), both give backprop's gradient.

Direct feedback alignment (DFA) and direct random target projection (DRTP) give every hidden
layer l a gradient through its own fixed C x D_l matrix (C classes, D_l the flattened size of the
layer's output), stored as buffers `direct_feedback1..` of the network: they travel with its
state dict (best.pt, checkpoint.pt) and leave the parameters, and so the optimizers, alone.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from models.network import DualNetwork
from utils.seed import Stream, stream_seed

DIRECT_FEEDBACK = "direct_feedback"  # buffer name prefix: direct_feedback1 for layer 1, ...


# --- FA: the feedback map's weight in place of the forward weight's transpose ---------------

def _like_gradient(tensor: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """`tensor` in the gradient's precision: under bfloat16 autocast the saved inputs and the
    feedback weight are float32 while the gradients are bfloat16."""
    return tensor.to(gradient.dtype)


class _LinearWithFixedFeedback(torch.autograd.Function):
    """`F.linear(x, weight, bias)` whose input gradient goes through `feedback` (in x out)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback):
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        x, feedback = ctx.saved_tensors
        needs_input, needs_weight, needs_bias, _ = ctx.needs_input_grad
        grad_input = grad_output @ _like_gradient(feedback, grad_output).T if needs_input else None
        grad_weight = grad_output.T @ _like_gradient(x, grad_output) if needs_weight else None
        grad_bias = grad_output.sum(0) if needs_bias else None
        return grad_input, grad_weight, grad_bias, None


def feedback_weight_as_forward(feedback_weight: torch.Tensor) -> torch.Tensor:
    """A feedback map's weight in the layout of its layer's forward weight: transposed
    (linear), or transposed and turned by 180 degrees (conv: the kernel K with
    conv_transpose2d(., K) == conv2d(., feedback_weight) at stride 1, padding 1, the adjoint's
    kernel; ccl/measures.py says why)."""
    if feedback_weight.dim() == 2:
        return feedback_weight.T
    if feedback_weight.dim() == 4:
        return feedback_weight.transpose(0, 1).flip(2, 3)
    raise ValueError(f"no forward layout for a weight of shape {tuple(feedback_weight.shape)}")


def _output_padding(input_size: Sequence[int], output_size: Sequence[int], kernel_size: Sequence[int],
                    stride: Sequence[int], padding: Sequence[int]) -> tuple[int, ...]:
    """What a strided conv's floor division dropped, for its transpose to restore the input size."""
    return tuple(size - ((out - 1) * s - 2 * p + k)
                 for size, out, k, s, p in zip(input_size, output_size, kernel_size, stride, padding))


class _Conv2dWithFixedFeedback(torch.autograd.Function):
    """`F.conv2d(x, weight, bias, stride, padding)` whose input gradient is the transposed conv
    with the kernel read from `feedback` (in x out x k x k)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding):
        ctx.save_for_backward(x, feedback)
        ctx.weight_shape, ctx.stride, ctx.padding = weight.shape, stride, padding
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_output):
        x, feedback = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            kernel = _like_gradient(feedback_weight_as_forward(feedback), grad_output)
            padding = _output_padding(x.shape[2:], grad_output.shape[2:], kernel.shape[2:],
                                      ctx.stride, ctx.padding)
            grad_input = F.conv_transpose2d(grad_output, kernel, stride=ctx.stride,
                                            padding=ctx.padding, output_padding=padding)
        if needs_weight:
            grad_weight = torch.nn.grad.conv2d_weight(_like_gradient(x, grad_output), ctx.weight_shape,
                                                      grad_output, ctx.stride, ctx.padding)
        if needs_bias:
            grad_bias = grad_output.sum((0, 2, 3))
        return grad_input, grad_weight, grad_bias, None, None, None


def _with_fixed_feedback(layer_map: nn.Module, feedback: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`layer_map(x)`, its input gradient sent through `feedback` instead of its weight."""
    if isinstance(layer_map, nn.Linear):
        return _LinearWithFixedFeedback.apply(x, layer_map.weight, layer_map.bias, feedback)
    plain_conv = (isinstance(layer_map, nn.Conv2d) and layer_map.groups == 1
                  and layer_map.dilation == (1, 1) and layer_map.padding_mode == "zeros")
    if plain_conv:
        return _Conv2dWithFixedFeedback.apply(x, layer_map.weight, layer_map.bias, feedback,
                                              layer_map.stride, layer_map.padding)
    raise TypeError(f"feedback alignment knows Linear maps and plain Conv2d maps (no groups, no "
                    f"dilation, zero padding), not {layer_map}")


def _check_feedback_shape(layer_map: nn.Module, feedback: torch.Tensor) -> None:
    if feedback_weight_as_forward(feedback).shape != layer_map.weight.shape:
        raise ValueError(f"a feedback weight of shape {tuple(feedback.shape)} cannot stand in for "
                         f"the transpose of a forward weight of shape {tuple(layer_map.weight.shape)}")


@contextmanager
def feedback_aligned(network: DualNetwork) -> Iterator[None]:
    """Within the block, every forward map of `network` passes errors to its input through its
    layer's feedback weight, never trained (it gets no gradient). The graph built inside keeps
    this backward after the block ends."""
    maps = [(layer.fwd, layer.bwd.weight.detach()) for layer in network.layers]
    for layer_map, feedback in maps:
        _check_feedback_shape(layer_map, feedback)
    # An instance attribute shadows the class's forward for this block only; hooks could not
    # replace the map's computation without running it twice.
    for layer_map, feedback in maps:
        layer_map.forward = partial(_with_fixed_feedback, layer_map, feedback)
    try:
        yield
    finally:
        for layer_map, _ in maps:
            del layer_map.forward


# --- DFA and DRTP: one fixed projection per hidden layer ------------------------------------

@torch.no_grad()
def hidden_output_sizes(network: DualNetwork, input_shape: Sequence[int]) -> list[int]:
    """D_l, the flattened size of each hidden layer's output, from one zero sample run in eval
    mode (BatchNorm's running statistics stay untouched)."""
    was_training = network.training
    network.eval()
    try:
        device = next(network.parameters()).device
        activations = network(torch.zeros(1, *input_shape, device=device))
    finally:
        network.train(was_training)
    return [a[0].numel() for a in activations[1:-1]]


def draw_projection(num_classes: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """A C x D matrix uniform in +-1/sqrt(D): drawn as PyTorch draws the weight of a
    Linear(D, C), the map from the hidden layer straight to the output that a direct rule acts
    as if it had. The top hidden layer's gradient e @ B then has the distribution of backprop's
    e @ W at initialisation, so the rules start at BP's scale under BP's learning rate and
    gradient clip (docs/REPRODUCTION.md, "The baselines")."""
    bound = 1 / math.sqrt(size)
    return torch.empty(num_classes, size).uniform_(-bound, bound, generator=generator)


def add_direct_feedback(network: DualNetwork, input_shape: Sequence[int], num_classes: int,
                        seed: int) -> None:
    """Register the fixed projections of the hidden layers as buffers of `network`, drawn on the
    CPU from a generator of their own seeded from `seed`: the same matrices on every device,
    and the global random stream (which initialises the weights) untouched."""
    generator = torch.Generator().manual_seed(stream_seed(seed, Stream.DIRECT_FEEDBACK))
    device = next(network.parameters()).device
    for index, size in enumerate(hidden_output_sizes(network, input_shape), start=1):
        network.register_buffer(f"{DIRECT_FEEDBACK}{index}",
                                draw_projection(num_classes, size, generator).to(device))


def direct_feedback(network: DualNetwork) -> list[torch.Tensor]:
    """The fixed projections of the hidden layers, from layer 1 up."""
    hidden = len(network.layers) - 1
    names = [f"{DIRECT_FEEDBACK}{index}" for index in range(1, hidden + 1)]
    buffers = dict(network.named_buffers())
    missing = [name for name in names if name not in buffers]
    if missing:
        raise RuntimeError(f"the network has no fixed projections {', '.join(missing)}: DFA and "
                           f"DRTP need ccl.rules.add_fixed_state(rule, model, ...) after the "
                           f"model is built")
    return [buffers[name] for name in names]


class _GradientAt(torch.autograd.Function):
    """A zero whose gradient with respect to `output` is `gradient`: it hands a layer's output
    the gradient a direct rule gives it while the loss keeps the value of the output loss alone."""

    @staticmethod
    def forward(ctx, output, gradient):
        ctx.save_for_backward(gradient)
        return output.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        gradient, = ctx.saved_tensors
        return gradient * grad, None


def gradient_at(output: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """A zero-valued loss term that gives `output` the gradient `gradient` (N x D_l, reshaped
    to the output's maps for a conv layer)."""
    return _GradientAt.apply(output, gradient.reshape(output.shape))
