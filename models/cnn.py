"""The paper's CNNs (docs/ALGORITHM.md section 3): five dual conv layers that halve 32x32 input down to 1x1,
then a dual linear head on the flattened 512 features.

- `cnn`:      strided convs with biases (`bias_init: zero` starts them at 0)
- `cnn_pool`: stride-1 convs without bias, each followed by 2x2 max pooling
"""
from __future__ import annotations

from models.conv import DualConv
from models.layers import DualLinear, LayerOptions
from models.network import DualNetwork

CHANNELS = (128, 128, 256, 256, 512)
INPUT_SIZE = 32  # five halvings: 32 -> 16 -> 8 -> 4 -> 2 -> 1


def cnn(in_channels: int, num_classes: int, options: LayerOptions, *, pooled: bool) -> DualNetwork:
    sizes = [in_channels, *CHANNELS]
    last = len(CHANNELS) - 1
    convs = [DualConv(c_in, c_out, options, pool=pooled, bias=not pooled, is_bottom=(index == 0),
                      flatten_to=(1, 1) if index == last else None)
             for index, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:]))]
    return DualNetwork([*convs, DualLinear(CHANNELS[-1], num_classes, options, is_top=True)])


def build_cnn(config, input_shape, num_classes, *, pooled: bool) -> DualNetwork:
    """The `cnn` (pooled=False) or `cnn_pool` (pooled=True) network of a config."""
    expected = (config.num_chn, INPUT_SIZE, INPUT_SIZE)
    if tuple(input_shape) != expected:
        raise ValueError(f"the released CNNs take images of shape (num_chn, 32, 32) = {expected}, "
                         f"got {tuple(input_shape)}")
    return cnn(config.num_chn, num_classes, LayerOptions.from_config(config), pooled=pooled)
