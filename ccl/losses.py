"""The layer-pair losses of CCL (docs/ALGORITHM.md section 5 and 6).

A pair loss compares the forward activations A of a layer (N samples) with the feedback
signals B of the same layer. For classification B has one row per class (the feedback
network's image of each class's one-hot vector) and the target of A @ B.T is the batch's
one-hot label matrix.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

# rows -> (every process's rows of the global batch in order, the index of these rows' first)
GatherRows = Callable[[torch.Tensor], tuple[torch.Tensor, int]]

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


def mlp_pair_loss(a: torch.Tensor, b: torch.Tensor, onehot: torch.Tensor,
                  keep: torch.Tensor | None = None, *, loss_scale_C: float) -> torch.Tensor:
    """`mse(A @ B.T, T) / D * loss_scale_C * 256`, unnormalised (main_class_mlp.py)."""
    A, B = _rows(a, keep), b.flatten(1)
    return F.mse_loss(A @ B.T, onehot) * _mlp_scale(loss_scale_C, A.shape[1])


def cnn_pair_loss(a: torch.Tensor, b: torch.Tensor, onehot: torch.Tensor,
                  keep: torch.Tensor | None = None, *, loss_scale_C: float,
                  loss_scale_ssl: float, gather_rows: GatherRows | None = None) -> torch.Tensor:
    """Row-normalised alignment plus the two decorrelation terms (main_class_cnn.py).
    `gather_rows`: across processes, what gathers every process's rows of the global batch
    (`World.gather_rows`)."""
    A, B = _unit_rows(_rows(a, keep)), _unit_rows(b.flatten(1))
    eye_b = torch.eye(B.shape[0], device=B.device, dtype=B.dtype)
    return (F.mse_loss(A @ B.T, onehot) * loss_scale_C
            + _sample_decorrelation(A, gather_rows) * loss_scale_ssl
            + F.mse_loss(B @ B.T, eye_b) * loss_scale_ssl)


def _sample_decorrelation(A: torch.Tensor, gather_rows: GatherRows | None) -> torch.Tensor:
    """`mse(A @ A.T, I)` over the global batch. Across processes each rank takes its rows of the
    N x N Gram matrix (its rows against every rank's) and their mean: the ranks' means average to
    the global one, and their gradients, summed back through the gather, to its gradient."""
    rows, start = (A, 0) if gather_rows is None else gather_rows(A)
    eye = torch.eye(A.shape[0], rows.shape[0], device=A.device, dtype=A.dtype)
    return F.mse_loss(A @ rows.T, eye.roll(start, dims=1) if start else eye)


class _FusedCnnPairLoss(torch.autograd.Function):
    """`cnn_pair_loss` with its gradient in closed form (`fused_pair_loss: 1`).

    With unit rows A = a / |a| (activations) and B = b / |b| (feedback signals), the loss reads
    three Gram-type products. Each is formed from the raw rows and scaled by the outer product
    of the reciprocal norms, so the unit rows are never materialised. The gradient with respect
    to the raw rows is the symmetrised residuals times [a; b]: the N x N Gram term costs one
    product over the N x D activations where autograd's released loss runs two, and the
    normalisation two passes over them where autograd's runs some ten. The same function,
    rounded differently (docs/PERFORMANCE.md). Norms, residuals and the loss are at least
    float32, the products in the inputs' precision (bfloat16 under `precision: bf16`).
    """

    @staticmethod
    def forward(ctx, a, b, onehot, loss_scale_C, loss_scale_ssl):
        dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
        norm_a, norm_b = (torch.linalg.vector_norm(x, dim=1, dtype=dtype) for x in (a, b))
        inv_a, inv_b = (norm_a + NORM_EPS).reciprocal(), (norm_b + NORM_EPS).reciprocal()

        def gram(x, inv_x, y, inv_y):  # the unit rows' products, from the raw rows
            return (x @ y.T).to(dtype).mul_(torch.outer(inv_x, inv_y))

        aa, bb = gram(a, inv_a, a, inv_a), gram(b, inv_b, b, inv_b)
        aa.diagonal().sub_(1)  # residuals against the identity ...
        bb.diagonal().sub_(1)
        ab = gram(a, inv_a, b, inv_b).sub_(onehot)  # ... and against the labels
        ctx.save_for_backward(a, b, aa, ab, bb, norm_a, norm_b, inv_a, inv_b)
        ctx.scales = loss_scale_C, loss_scale_ssl
        return (ab.square().mean() * loss_scale_C + aa.square().mean() * loss_scale_ssl
                + bb.square().mean() * loss_scale_ssl)

    @staticmethod
    def backward(ctx, grad_loss):
        a, b, aa, ab, bb, norm_a, norm_b, inv_a, inv_b = ctx.saved_tensors
        loss_scale_C, loss_scale_ssl = ctx.scales
        # d loss / d(unit rows) = residual coefficients @ unit rows; the unit rows' 1/|x| moves
        # onto the coefficients' columns, so the products read the raw rows
        ab = ab * (2 * loss_scale_C / ab.numel()) * grad_loss
        aa = (aa + aa.T) * (2 * loss_scale_ssl / aa.numel()) * grad_loss
        bb = (bb + bb.T) * (2 * loss_scale_ssl / bb.numel()) * grad_loss

        def product(coef_a, coef_b, dtype):  # coef_a @ (inv_a * a) + coef_b @ (inv_b * b)
            return ((coef_a * inv_a).to(dtype).mm(a.to(dtype))
                    .addmm_((coef_b * inv_b).to(dtype), b.to(dtype)))

        return (_through_normalisation(product(aa, ab, a.dtype), a, norm_a, inv_a),
                _through_normalisation(product(ab.T, bb, b.dtype), b, norm_b, inv_b), None, None, None)


def _through_normalisation(grad_unit: torch.Tensor, x: torch.Tensor, norm: torch.Tensor,
                           inv: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to rows x of x / (|x| + eps), given the one with respect to the
    result: g / (|x| + eps) - (g . x) x / ((|x| + eps)^2 |x|), in place on g. A zero row (a
    flooded sample) has no direction to remove, as in autograd's norm."""
    along = torch.einsum("ij,ij->i", grad_unit, x).to(norm.dtype)  # row-wise dot products, no temporary
    along = torch.where(norm > 0, along * inv.square() / norm, torch.zeros_like(along))
    return grad_unit.mul_(inv[:, None]).addcmul_(x, along[:, None], value=-1)


def fused_cnn_pair_loss(a: torch.Tensor, b: torch.Tensor, onehot: torch.Tensor,
                        keep: torch.Tensor | None = None, *, loss_scale_C: float,
                        loss_scale_ssl: float) -> torch.Tensor:
    """`cnn_pair_loss` computed by `_FusedCnnPairLoss`: the same value and gradients up
    to rounding, with far fewer passes over the activations."""
    return _FusedCnnPairLoss.apply(_rows(a, keep), b.flatten(1), onehot, loss_scale_C, loss_scale_ssl)


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
