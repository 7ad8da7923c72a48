"""The paper's MLPs: a stack of dual linear layers declared by its sizes."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from models.layers import DualLinear, LayerOptions
from models.network import DualNetwork


def mlp(sizes: Sequence[int], options: LayerOptions) -> DualNetwork:
    """`sizes` = [input, hidden..., classes]; e.g. [784, 256, 256, 256, 256, 256, 10]."""
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {list(sizes)}")
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return DualNetwork([
        DualLinear(n_in, n_out, options, is_bottom=(index == 0), is_top=(index == len(pairs) - 1))
        for index, (n_in, n_out) in enumerate(pairs)
    ])


def paper_mlp_sizes(input_shape: Sequence[int], num_classes: int) -> list[int]:
    """The released widths: 784-256x5-C for 28x28 greyscale input, 3072-1024x3-C for 32x32 colour."""
    input_dim = math.prod(input_shape)
    if input_dim == 28 * 28:
        return [input_dim, *[256] * 5, num_classes]
    if input_dim == 3 * 32 * 32:
        return [input_dim, *[1024] * 3, num_classes]
    raise ValueError(f"no released MLP for inputs of shape {tuple(input_shape)}")


@torch.no_grad()
def initialise_orthogonal(network: DualNetwork, feedback_range: float, seed: int) -> None:
    """The FW-DTP code's init (`weight_init: orthogonal`): layer by layer from the input up,
    the forward weight orthogonal (gain 1), then the feedback weight uniform in
    +-`feedback_range`, drawn from a generator seeded with `seed`: the same numbers as the
    released code's after `torch.manual_seed(seed)`, whatever the global stream has drawn."""
    generator = torch.Generator().manual_seed(seed)
    for layer in network.layers:  # drawn on the CPU: the same numbers on every device
        forward = nn.init.orthogonal_(torch.empty(layer.fwd.weight.shape), generator=generator)
        feedback = nn.init.uniform_(torch.empty(layer.bwd.weight.shape), -feedback_range, feedback_range,
                                    generator=generator)
        layer.fwd.weight.copy_(forward)
        layer.bwd.weight.copy_(feedback)


def build_simple_linear(config, input_shape, num_classes) -> DualNetwork:
    network = mlp(paper_mlp_sizes(input_shape, num_classes), LayerOptions.from_config(config))
    if config.weight_init == "orthogonal":
        initialise_orthogonal(network, config.feedback_init_range, config.seed)
    return network
