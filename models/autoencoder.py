"""The STL-10 dual convolutional autoencoder (docs/ALGORITHM.md section 6).

Eight dual layers: an encoder of strided convs 3->128->256->1024->2048 (96->48->24->12->6) and a
decoder of upsampling convs 2048->1024->256->128->3 (6->12->24->48->96). The forward network
reads them as encoder then decoder (x -> reconstruction), the feedback network the other way
round (target -> b_0). Activations [x, e1..e4, d4..d1] pair with signals [b_0, .., target].

Its initialisation is its own: every conv weight orthogonal, forward biases zero (feedback
biases keep PyTorch's default), the decoder's forward and the encoder's feedback weights
scaled by 0.001, and the weights of the two output maps (the reconstruction's, b_0's) start at
exactly zero.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from models.conv import DualConv, DualUpConv
from models.layers import LayerOptions
from models.network import DualNetwork

ENCODER_WIDTHS = (128, 256, 1024, 2048)
SMALL_INIT_SCALE = 0.001


def conv_autoencoder(in_channels: int, options: LayerOptions) -> DualNetwork:
    widths = (in_channels, *ENCODER_WIDTHS)
    down = list(zip(widths[:-1], widths[1:]))
    up = [(n_out, n_in) for n_in, n_out in reversed(down)]
    # Biases are set by `initialise` below, whatever `bias_init` says (as in the released code).
    options = dataclasses.replace(options, bias_init="none")
    encoder = [DualConv(n_in, n_out, options, pool=False, bias=True, is_bottom=(index == 0))
               for index, (n_in, n_out) in enumerate(down)]
    decoder = [DualUpConv(n_in, n_out, options, is_top=(index == len(up) - 1))
               for index, (n_in, n_out) in enumerate(up)]
    network = DualNetwork(encoder + decoder)
    initialise(encoder, decoder)
    return network


@torch.no_grad()
def initialise(encoder, decoder) -> None:
    """The released autoencoder's init, in the released order of random draws (every forward
    weight before its feedback weight, from the input layer up)."""
    for layer in encoder + decoder:
        for conv in (layer.fwd, layer.bwd):
            orthogonal_conv_(conv.weight)
        nn.init.zeros_(layer.fwd.bias)
    for layer in decoder:
        layer.fwd.weight.mul_(SMALL_INIT_SCALE)
    for layer in encoder:
        layer.bwd.weight.mul_(SMALL_INIT_SCALE)
    decoder[-1].fwd.weight.zero_()  # the reconstruction starts at 0 ...
    encoder[0].bwd.weight.zero_()   # ... and b_0 at the constant of its feedback bias


def orthogonal_conv_(weight: torch.Tensor) -> None:
    """Orthogonal init of a conv weight (out, in, kh, kw). With fewer output than input
    channels, the (in, out, kh, kw) layout is orthogonalised and transposed back."""
    if weight.shape[0] >= weight.shape[1]:
        weight.copy_(orthogonal(weight.shape))
    else:
        transposed = (weight.shape[1], weight.shape[0], *weight.shape[2:])
        weight.copy_(orthogonal(transposed).transpose(0, 1))


def orthogonal(shape) -> torch.Tensor:
    """A (semi-)orthogonal tensor: `nn.init.orthogonal_`'s draw and result (the Q factor with a
    positive-diagonal R of a standard normal matrix, rows = shape[0]), computed by Cholesky QR.

    On CPU this takes a fifth of the time of Householder QR for the 2048-channel weights (1.4 s
    instead of 7 s each). The normal matrices drawn here are well conditioned (at least 2.25
    times more rows than columns once transposed), where Cholesky QR is exact to float rounding;
    a singular one falls back to Householder QR.
    """
    rows = shape[0]
    cols = torch.Size(shape).numel() // rows
    matrix = torch.empty(rows, cols).normal_(0, 1)  # the same random draw as nn.init.orthogonal_
    tall = matrix if rows >= cols else matrix.T
    upper, info = torch.linalg.cholesky_ex(tall.T @ tall, upper=True)
    if info == 0:
        q = torch.linalg.solve_triangular(upper, tall, upper=True, left=False)
    else:
        q, r = torch.linalg.qr(tall)
        q = q * torch.diagonal(r).sign()
    return (q if rows >= cols else q.T).reshape(shape)


def build_conv_autoencoder(config, input_shape, num_classes) -> DualNetwork:
    channels, height, width = input_shape
    scale = 2 ** len(ENCODER_WIDTHS)
    if height % scale or width % scale:
        raise ValueError(f"the autoencoder halves the image {len(ENCODER_WIDTHS)} times: height and "
                         f"width must be multiples of {scale}, got {height}x{width}")
    return conv_autoencoder(channels, LayerOptions.from_config(config))
