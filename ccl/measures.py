"""How the forward and feedback networks of a dual network relate (the paper's analyses,
docs/ALGORITHM.md section 9), measured on a probe batch.

The probe batch (`probe_batch`) is the first N images of a split as `utils.data.load_splits`
returns it: the test set in its file order; the validation split in the order of its seeded
draw from the training file, so its first N are a random sample fixed by the seed. The trainer
measures the model on such a batch of validation images every `analysis_every` epochs
(analysis.jsonl); `python -m ccl.analysis RUN_DIR` (cli.py) measures a run's best model.

Three measures, one entry per dual layer l = 1..L (`layer1..layerL`):

- `cka`: the (L+1) x (L+1) matrix of linear CKA (Kornblith et al. 2019) between every forward
  activation a_0..a_L (rows: the input a_0 = x first, the output a_L last) and every feedback
  activation b_0..b_L (columns: b_0, the feedback network's output in the input's shape, first;
  b_L, what the feedback network receives - the one-hot label or the target image - last),
  each flattened to one row per sample: the matrix of the paper's Figure 6, cka[0][0] =
  CKA(input, b_0). Layer pair l compares a_l with b_l, so the cells the losses compare are the
  main diagonal: cka[l][l] for the pair losses l = 0..L-1 and cka[L][L] for the output loss
  (logits against labels; the autoencoder's reconstruction against its target). The feedback
  network receives each probe sample's own target: its one-hot label for classification (in
  training it receives the C x C identity instead, one row per class; CKA needs the rows of both
  sides to be the same samples), the target image for the autoencoder.
- `weight_cosine`: the cosine between the forward weight of layer l and its feedback weight,
  the latter rearranged to the forward weight's layout:
    linear:  W (out, in) against V.T, where V (in, out) is the feedback Linear(out, in) weight;
    conv:    W (out, in, kh, kw) against V.transpose(0, 1).flip(2, 3), V (in, out, kh, kw).
  The conv rearrangement is the kernel of the adjoint map. A stride-1 conv with padding 1 sums
  W[o, c, u, v] x[c, i + u - 1, j + v - 1]; its adjoint sends y back to
  sum_{o, u, v} W[o, c, 2 - u, 2 - v] y[o, i + u - 1, j + v - 1], which is the same conv with
  input and output channels swapped and the kernel turned by 180 degrees. So conv2d with
  W.transpose(0, 1).flip(2, 3) is exactly the transposed conv of conv2d with W, the map that
  backprop sends errors through, and cosine 1 means the feedback map carries the forward
  weights as backprop would (weight transport). Around the strided and pooled maps the
  resampling differs from backprop's (nearest upsampling rather than zero insertion or
  unpooling), so there cosine 1 means the kernels match, not that the maps are adjoint.
- `grad_angle_deg`: the angle in degrees between the gradient that the run's rule gives the
  forward weight of layer l and the gradient of the objective's output loss by full backprop through
  the forward network (`ccl.rules.bp_loss`: cross-entropy, autoencoder: reconstruction MSE), at
  the same parameters, on the probe batch as one batch. The rule's gradient is its raw one:
  before gradient centralisation and clipping, unscaled by warm-up (a scale leaves the angle
  alone), with flooding as the objective applies it, in float32 and uncompiled whatever the
  run's speed-ups. Under BP every angle is 0; under CCL so is the top layer's, whose only loss
  is the output loss (cross-entropy on the logits; the autoencoder's top pair is the
  reconstruction's MSE, scaled).

Undefined values are NaN here and `null` in `analyse`'s JSON-ready record: the CKA of a
representation that is constant over the probe batch (the autoencoder's b_0 and reconstruction
start constant), the cosine of an all-zero weight (the autoencoder's two output maps start at
exactly zero), the angle with an all-zero gradient (under CCL, a hidden layer whose probe samples
are all flooded has none). None of these has a direction to compare.

Modes: the CKA's activations are computed in eval mode (BatchNorm on its running statistics,
each sample independent of the others); the gradients in train mode, as the rules see them in
training. Every function here leaves the model exactly as it found it - parameters, `.grad`
fields (gradients are taken with `torch.autograd.grad`, never accumulated), BatchNorm running
statistics and `num_batches_tracked`, each module's train/eval flag - and the torch CPU and CUDA
random states, so a run's numbers are the same bit for bit with the analysis on or off.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ccl.fixed_feedback import feedback_weight_as_forward
from ccl.rules import RuleLoss, bp_loss
from utils.data.loader import BatchLoader
from utils.seed import Stream, stream_seed


def probe_batch(loader: BatchLoader, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the first `samples` images of the loader's split (all of them when
    it has fewer), made as its batches are: classification targets are labels, the
    autoencoder's come from its task transform."""
    generator = torch.Generator(device=loader.images.device).manual_seed(stream_seed(seed, Stream.PROBE))
    return loader.make_batch(loader.images[:samples], loader.labels[:samples], generator)


# --- linear CKA ----------------------------------------------------------------------------
def _centred_rows(x: torch.Tensor) -> torch.Tensor:
    """One float64 row per sample, each feature centred over the samples."""
    x = x.detach().flatten(1).double()
    return x - x.mean(dim=0, keepdim=True)


def _normalised_gram(x: torch.Tensor) -> torch.Tensor:
    """The centred Gram matrix X_c X_c^T (N x N) divided by its Frobenius norm."""
    gram = x @ x.T
    return gram / torch.linalg.matrix_norm(gram)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same N samples (N x D and N x D', or any
    shape with the samples first, flattened): ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)
    with centred features, in float64. NaN when either representation is constant.

    The same value is <K_c, L_c> / (||K_c||_F ||L_c||_F) with the centred N x N Gram matrices
    K_c = X_c X_c^T, L_c = Y_c Y_c^T. The feature form costs about N (D D' + D^2 + D'^2)
    multiplications, the Gram form N^2 (D + D'); the cheaper one is taken.
    """
    if len(x) != len(y):
        raise ValueError(f"CKA compares representations of the same samples: got {len(x)} and "
                         f"{len(y)} rows")
    x, y = _centred_rows(x), _centred_rows(y)
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if n * (dx + dy) < dx * dy + dx * dx + dy * dy:
        return float((_normalised_gram(x) * _normalised_gram(y)).sum())
    cross = (y.T @ x).square().sum()
    return float(cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


# --- keeping the model as it was -----------------------------------------------------------
@contextmanager
def model_state_kept(model: torch.nn.Module) -> Iterator[None]:
    """Run the body, then put back every module's train/eval flag, every buffer (BatchNorm's
    running statistics and batch count) and the torch CPU and CUDA random states."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    cuda_devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            for module, training in modes:
                module.training = training


# --- the three measures --------------------------------------------------------------------
def probe_feedback_input(objective, targets: torch.Tensor) -> torch.Tensor:
    """What the feedback network receives for each probe sample. Integer targets are class
    labels, and the objective's feedback input then holds one row per class (the C x C identity):
    each sample takes its own class's row, its one-hot label. Any other target (an image) is
    the feedback input itself."""
    feedback_input = objective.feedback_input(targets)
    if targets.dtype.is_floating_point:
        return feedback_input
    return feedback_input[targets]


@torch.no_grad()
def cka_matrix(model, objective, inputs: torch.Tensor, targets: torch.Tensor) -> list[list[float]]:
    """cka[i][j] = linear CKA of a_i and b_j, i, j = 0..L, in eval mode (see the module docstring).

    Each of the 2(L+1) representations is reduced once to its normalised centred Gram matrix, so
    the (L+1)^2 entries cost (L+1)^2 inner products of N x N matrices (and 2(L+1) of them in
    memory, float64)
    instead of L^2 products of the D x D' feature matrices.
    """
    with model_state_kept(model):
        model.eval()
        activations = model(inputs)
        signals = model.feedback(probe_feedback_input(objective, targets))
        forward_grams = [_normalised_gram(_centred_rows(a)) for a in activations]
        feedback_grams = [_normalised_gram(_centred_rows(b)) for b in signals]
    return [[float((k * l).sum()) for l in feedback_grams] for k in forward_grams]


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """Cosine of two tensors as flat vectors, in float64; NaN when either is all zero."""
    u, v = u.detach().flatten().double(), v.detach().flatten().double()
    norms = u.norm() * v.norm()
    return float(u @ v / norms) if norms > 0 else math.nan


@torch.no_grad()
def weight_cosines(model) -> list[float]:
    """weight_cosine[l - 1]: forward weight of layer l against its rearranged feedback weight."""
    cosines = []
    for name, layer in model.named_children():
        forward, feedback = layer.fwd.weight, feedback_weight_as_forward(layer.bwd.weight)
        if forward.shape != feedback.shape:
            raise ValueError(f"{name}: the feedback weight, rearranged, has shape "
                             f"{tuple(feedback.shape)}, the forward weight {tuple(forward.shape)}")
        cosines.append(cosine(forward, feedback))
    return cosines


def angle_deg(u: torch.Tensor, v: torch.Tensor) -> float:
    """Angle between two tensors as flat vectors, in degrees; NaN when either is all zero.

    2 atan2(|u' - v'|, |u' + v'|) of the unit vectors u', v': exact near 0 and 180 degrees,
    where acos of the cosine loses half the digits."""
    u, v = u.detach().flatten().double(), v.detach().flatten().double()
    norm_u, norm_v = u.norm(), v.norm()
    if norm_u == 0 or norm_v == 0:
        return math.nan
    u, v = u / norm_u, v / norm_v
    return math.degrees(2 * math.atan2(float((u - v).norm()), float((u + v).norm())))


def forward_weight_gradients(model, objective, rule: RuleLoss, inputs: torch.Tensor,
                             targets: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of `rule`'s loss with respect to each layer's forward weight, in train
    mode; zero for a weight the loss does not reach. `.grad` fields are left alone."""
    weights = [layer.fwd.weight for layer in model.layers]
    with model_state_kept(model), torch.enable_grad():
        model.train()
        loss = rule(model, objective, inputs, targets)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]


def gradient_angles(model, objective, rule: RuleLoss, inputs: torch.Tensor,
                    targets: torch.Tensor) -> list[float]:
    """grad_angle_deg[l - 1]: the rule's gradient of forward weight l against backprop's of the
    output loss (see the module docstring)."""
    rule_grads = forward_weight_gradients(model, objective, rule, inputs, targets)
    backprop_grads = forward_weight_gradients(model, objective, bp_loss, inputs, targets)
    return [angle_deg(g, h) for g, h in zip(rule_grads, backprop_grads)]


# --- one record ----------------------------------------------------------------------------
@torch.no_grad()
def weight_changes(model, initial: list[dict]) -> dict[str, list[float | None]]:
    """How far each layer's forward and feedback weight moved from `initial` (each layer's
    state_dict then): ||W - W_0|| / ||W_0||, in float64; null where W_0 is all zero."""
    def change(now: torch.Tensor, then: torch.Tensor) -> float | None:
        now, then = now.double(), then.double()
        return _json_number(float((now - then).norm() / then.norm()) if then.norm() > 0 else math.nan)

    return {side: [change(getattr(layer, side).weight, state[f"{side}.weight"])
                   for layer, state in zip(model.layers, initial, strict=True)]
            for side in ("fwd", "bwd")}


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def analyse(model, objective, rule: RuleLoss, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """The three measures on the probe batch (inputs, targets), JSON-ready:
    {"layers": ["layer1", ...], "cka": [[...] * (L+1)] * (L+1), "weight_cosine": [...] * L,
     "grad_angle_deg": [...] * L}, plain floats, null where undefined. The model and the random
    states are left as they were."""
    return {
        "layers": [name for name, _ in model.named_children()],
        "cka": [[_json_number(v) for v in row] for row in cka_matrix(model, objective, inputs, targets)],
        "weight_cosine": [_json_number(v) for v in weight_cosines(model)],
        "grad_angle_deg": [_json_number(v) for v in gradient_angles(model, objective, rule, inputs, targets)],
    }
