"""The layer-pair losses of CCL (SPEC section 5 and 6).

A pair loss compares the forward activations A of a layer (N samples) with the feedback
signals B of the same layer. For classification B has one row per class (the feedback
network's image of each class's one-hot vector) and the target of A @ B.T is the batch's
one-hot label matrix.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NORM_EPS = 1e-8
# The released code floods at |p(true class) - 1| < 0.1 whatever `filter_target` says.
RELEASED_FLOOD_THRESHOLD = 0.1


def flooding_keep_mask(logits: torch.Tensor, labels: torch.Tensor,
                       threshold: float = RELEASED_FLOOD_THRESHOLD) -> torch.Tensor:
    """1.0 for the samples that keep training, 0.0 for those already classified with
    probability within `threshold` of 1 (their rows are zeroed before the pair losses)."""
    with torch.no_grad():
        p_true = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        return ((p_true - 1).abs() >= threshold).to(logits.dtype)


def _rows(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    x = x.flatten(1)
    return x if keep is None else x * keep[:, None]


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=1, keepdim=True) + NORM_EPS)


def _mlp_scale(loss_scale_C: float, width: int) -> float:
    """The factor of `/ width * loss_scale_C * 256`, rounded as those three float32 operations
    round the gradient they pass back: one multiplication instead of three, and every gradient
    stays the same to the bit (the loss value itself may differ in its last bit)."""
    return float(np.float32(loss_scale_C * 256) / np.float32(width))


def mlp_alignment_loss(a: torch.Tensor, b: torch.Tensor, onehot: torch.Tensor,
                       keep: torch.Tensor | None = None, *, loss_scale_C: float) -> torch.Tensor:
    """`mse(A @ B.T, T) / D * loss_scale_C * 256`, unnormalised (main_class_mlp.py)."""
    A, B = _rows(a, keep), b.flatten(1)
    return F.mse_loss(A @ B.T, onehot) * _mlp_scale(loss_scale_C, A.shape[1])


def cnn_alignment_loss(a: torch.Tensor, b: torch.Tensor, onehot: torch.Tensor,
                       keep: torch.Tensor | None = None, *, loss_scale_C: float,
                       loss_scale_ssl: float) -> torch.Tensor:
    """Row-normalised alignment plus the two decorrelation terms (main_class_cnn.py)."""
    A, B = _unit_rows(_rows(a, keep)), _unit_rows(b.flatten(1))
    eye_a = torch.eye(A.shape[0], device=A.device, dtype=A.dtype)
    eye_b = torch.eye(B.shape[0], device=B.device, dtype=B.dtype)
    return (F.mse_loss(A @ B.T, onehot) * loss_scale_C
            + F.mse_loss(A @ A.T, eye_a) * loss_scale_ssl
            + F.mse_loss(B @ B.T, eye_b) * loss_scale_ssl)


def _centred_unit_maps(x: torch.Tensor) -> torch.Tensor:
    """Centre each (sample, channel) map over space and scale it to unit L2 norm."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    return x / (x.flatten(2).norm(dim=2)[..., None, None] + NORM_EPS)


def ae_pair_loss(a: torch.Tensor, b: torch.Tensor, loss_scale_C: float,
                 loss_scale_D: float | None) -> torch.Tensor:
    """Autoencoder pair loss, scaled by the maps' height H. `loss_scale_D=None` gives the end
    pairs' loss (raw term only); a number adds the centred/normalised term of hidden pairs."""
    height = a.shape[2]
    loss = F.mse_loss(a, b) * height * loss_scale_C
    if loss_scale_D is not None:
        loss = loss + F.mse_loss(_centred_unit_maps(a), _centred_unit_maps(b)) * height * loss_scale_D
    return loss
