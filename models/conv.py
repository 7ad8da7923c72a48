"""Convolutional dual layers (docs/ALGORITHM.md sections 2, 3 and 6). All use 3x3 kernels with padding 1,
so every change of resolution is a factor of 2 done by striding, pooling or upsampling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import DualLayer, LayerOptions


def _conv(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class DualConv(DualLayer):
    """A downsampling conv layer and its upsampling feedback.

    forward, strided (`pool=False`): Conv2d(in, out, stride 2)
    forward, pooled (`pool=True`):   Conv2d(in, out, stride 1), activation, MaxPool2d(2)
    feedback (both):                 nearest upsample x2, Conv2d(out, in, stride 1)

    `flatten_to=(h, w)`, the size of the output maps, makes the forward output a flat
    (N, out * h * w) vector and reshapes the feedback input back: the last conv layer below a
    linear head.
    """

    def __init__(self, in_channels: int, out_channels: int, options: LayerOptions, *,
                 pool: bool, bias: bool, is_top: bool = False, is_bottom: bool = False,
                 flatten_to: tuple[int, int] | None = None):
        super().__init__(_conv(in_channels, out_channels, 1 if pool else 2, bias),
                         _conv(out_channels, in_channels, 1, bias),
                         in_channels, out_channels, options,
                         is_top=is_top, is_bottom=is_bottom, bn=nn.BatchNorm2d)
        self.pool = pool
        self.flatten_to = flatten_to

    def after_fwd(self, a):
        if self.pool:
            a = F.max_pool2d(a, 2)
        return a if self.flatten_to is None else a.flatten(1)

    def before_bwd(self, b):
        if self.flatten_to is not None:
            b = b.view(len(b), self.fwd.out_channels, *self.flatten_to)
        return upsample2(b)


class DualUpConv(DualLayer):
    """An upsampling conv layer (autoencoder decoder) and its downsampling feedback.

    forward:  nearest upsample x2, Conv2d(in, out, stride 1)
    feedback: Conv2d(out, in, stride 2)
    """

    def __init__(self, in_channels: int, out_channels: int, options: LayerOptions, *,
                 bias: bool = True, is_top: bool = False, is_bottom: bool = False):
        super().__init__(_conv(in_channels, out_channels, 1, bias),
                         _conv(out_channels, in_channels, 2, bias),
                         in_channels, out_channels, options,
                         is_top=is_top, is_bottom=is_bottom, bn=nn.BatchNorm2d)

    def before_fwd(self, a):
        return upsample2(a)
