"""Dual layers: each owns a forward map (a_{l-1} -> a_l) and a feedback map (b_l -> b_{l-1}).

Parameter names follow the released code and the golden fixtures: `fwd` is the forward
network's linear/conv map of the layer and `bwd` the feedback network's, so a network's
state dict reads `layer3.fwd.weight`, `layer3.bwd.weight`, ...

BatchNorm position per side (`fw_bn`, `bw_bn`): 0 none, 1 on the map's input, 2 on the map's
output (before the activation). The output maps of the two networks (the top forward map that
makes the logits, the bottom feedback map that makes b_0) carry neither BN nor activation.
BN affine parameters belong to neither optimizer, as in the released code, so they never train.

Target propagation's FWDTP-BN (ccl/target_prop.py) normalises without parameters or running
statistics: `tanh_bn` is tanh followed by `batch_standardise`, and `act_F_top: bn` puts
`batch_standardise` on the forward network's output map (its logits).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BATCH_STD_EPS = 1e-12  # the FW-DTP code's, added to the standard deviation


def batch_standardise(z: torch.Tensor) -> torch.Tensor:
    """(z - mean) / (std + 1e-12) per column over the rows of the batch, std unbiased: the
    parameter-free batch normalisation of the FW-DTP code, the same batch statistics in training
    and evaluation (so an output depends on the batch it is computed in)."""
    return (z - z.mean(dim=0)) / (z.std(dim=0) + BATCH_STD_EPS)


def tanh_bn(z: torch.Tensor) -> torch.Tensor:
    return batch_standardise(torch.tanh(z))


ACTIVATIONS = {
    "elu": F.elu,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "selu": F.selu,
    "tanh_bn": tanh_bn,
}

NO_BN, BN_ON_INPUT, BN_ON_OUTPUT = 0, 1, 2


@dataclass(frozen=True)
class LayerOptions:
    """The per-layer choices of a config, shared by every layer of a network."""

    act_F: str = "elu"
    act_B: str = "elu"
    fw_bn: int = NO_BN
    bw_bn: int = NO_BN
    bn_affine: bool = True
    bias_init: str = "zero"
    act_F_top: str = "none"

    @classmethod
    def from_config(cls, config) -> "LayerOptions":
        return cls(config.act_F, config.act_B, config.fw_bn, config.bw_bn,
                   bool(config.bn_affine), config.bias_init, config.act_F_top)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# what the forward network's output map (the logits) goes through: nothing, as in every
# released config, or FWDTP-BN's batch standardisation (the FW-DTP code's `linear-BN`)
OUTPUT_ACTIVATIONS = {"none": _identity, "bn": batch_standardise}


class DualLayer(nn.Module):
    """A forward map and a feedback map of mirrored shapes, with their BN and activations.

    Subclasses build `fwd`/`bwd` and may resample around them through the four hooks below
    (upsampling, pooling, flattening); everything else is shared.
    """

    def __init__(self, fwd: nn.Module, bwd: nn.Module, in_size: int, out_size: int,
                 options: LayerOptions, *, is_top: bool, is_bottom: bool, bn: type[nn.Module]):
        super().__init__()
        self.fwd, self.bwd = fwd, bwd
        self.fwd_bn = self._make_bn(bn, options.fw_bn, in_size, out_size, options.bn_affine,
                                    is_output_map=is_top)
        self.bwd_bn = self._make_bn(bn, options.bw_bn, out_size, in_size, options.bn_affine,
                                    is_output_map=is_bottom)
        self.fw_bn_position = options.fw_bn if self.fwd_bn is not None else NO_BN
        self.bw_bn_position = options.bw_bn if self.bwd_bn is not None else NO_BN
        self.fwd_act = OUTPUT_ACTIVATIONS[options.act_F_top] if is_top else ACTIVATIONS[options.act_F]
        self.bwd_act = _identity if is_bottom else ACTIVATIONS[options.act_B]
        if options.bias_init == "zero":
            for layer_map in (fwd, bwd):
                if getattr(layer_map, "bias", None) is not None:
                    nn.init.zeros_(layer_map.bias)

    @staticmethod
    def _make_bn(bn, position, map_in, map_out, affine, is_output_map):
        if position == NO_BN or is_output_map:
            return None
        return bn(map_in if position == BN_ON_INPUT else map_out, affine=affine)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """a_{l-1} -> a_l."""
        a = self.before_fwd(a)
        a = self._map(a, self.fwd, self.fwd_bn, self.fw_bn_position, self.fwd_act)
        return self.after_fwd(a)

    def feedback(self, b: torch.Tensor) -> torch.Tensor:
        """b_l -> b_{l-1}."""
        b = self.before_bwd(b)
        b = self._map(b, self.bwd, self.bwd_bn, self.bw_bn_position, self.bwd_act)
        return self.after_bwd(b)

    @staticmethod
    def _map(x, layer_map, bn, bn_position, act):
        if bn_position == BN_ON_INPUT:
            x = bn(x)
        x = layer_map(x)
        if bn_position == BN_ON_OUTPUT:
            x = bn(x)
        return act(x)

    def before_fwd(self, a):
        return a

    def after_fwd(self, a):
        return a

    def before_bwd(self, b):
        return b

    def after_bwd(self, b):
        return b


class DualLinear(DualLayer):
    """forward `Linear(in, out)`, feedback `Linear(out, in)`, both without bias."""

    def __init__(self, in_features: int, out_features: int, options: LayerOptions, *,
                 is_top: bool = False, is_bottom: bool = False):
        super().__init__(nn.Linear(in_features, out_features, bias=False),
                         nn.Linear(out_features, in_features, bias=False),
                         in_features, out_features, options,
                         is_top=is_top, is_bottom=is_bottom, bn=nn.BatchNorm1d)
