"""The paper's MLPs: a stack of dual linear layers declared by its sizes."""
from __future__ import annotations

import math
from collections.abc import Sequence

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


def build_simple_linear(config, input_shape, num_classes) -> DualNetwork:
    return mlp(paper_mlp_sizes(input_shape, num_classes), LayerOptions.from_config(config))
