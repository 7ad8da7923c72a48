"""Dual networks built from a config: `build_model(config, input_shape, num_classes)`."""
from __future__ import annotations

from functools import partial

from models.autoencoder import build_conv_autoencoder
from models.cnn import build_cnn, cnn
from models.layers import DualLayer, DualLinear, LayerOptions
from models.mlp import build_simple_linear, mlp
from models.network import DualNetwork

# architecture name (the configs' `architecture` key) -> builder(config, input_shape, num_classes)
ARCHITECTURES = {
    "simple_linear": build_simple_linear,
    "cnn": partial(build_cnn, pooled=False),
    "cnn_pool": partial(build_cnn, pooled=True),
    # The released autoencoder script builds the same network whichever of its two names the
    # config gives (docs/FIDELITY.md).
    "cnn_pool_autoencoder": build_conv_autoencoder,
    "cnn_stride_autoencoder": build_conv_autoencoder,
}


def build_model(config, input_shape, num_classes) -> DualNetwork:
    return ARCHITECTURES[config.architecture](config, tuple(input_shape), num_classes)


__all__ = ["ARCHITECTURES", "DualLayer", "DualLinear", "DualNetwork", "LayerOptions",
           "build_model", "cnn", "mlp"]
