"""Helpers to compare against the golden fixtures of the released code (tests/fixtures/).

Tolerances, from what a correct float32 computation that rounds differently stays within:
- losses 1e-5, BN running statistics 1e-5;
- parameters after a step 1e-6: the updates are small next to the parameters (warm-up, small
  learning rates, clipping), so at 1e-4 a missing gradient centralisation or a wrong momentum
  would pass;
- logits and the reconstruction 1e-4: the autoencoder's BN passes on the convolutions' rounding,
  and the released float32 reconstruction is 1e-5 of its largest entry away from ours in
  float64;
- gradients 1e-4 relative, plus 1e-4 of the gradient's norm absolute (`assert_gradient_matches`).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ccl.config import build_config
from ccl.optim import DualOptimizer
from ccl.rules import RULES
from models import build_model
from models.layers import BN_ON_OUTPUT

FIXTURES = Path(__file__).parent / "fixtures"
RTOL = 1e-4
LOSS_RTOL = 1e-5
BN_STATS_RTOL = 1e-5
PARAM_RTOL = 1e-6
# Gradients of ReLU nets with BN after the first step (autoencoder): a rounding-level
# difference of the parameters flips a few ReLU units that BN centres at 0. In float64 that
# moves single entries by up to 8e-3, the whole tensor by 4e-4 of its norm.
LATE_GRAD_RTOL = 1e-3


def load_fixture(name: str, batch_from: str | None = None):
    """A fixture; `batch_from` names the fixture that holds its batch (`x`, `y`), for those
    stored without their own copy of it (tests/fixtures/README.md)."""
    golden = torch.load(FIXTURES / name, weights_only=True)
    if batch_from is not None:
        source = torch.load(FIXTURES / batch_from, weights_only=True)
        golden.update({key: source[key] for key in ("x", "y") if key in source})
    return golden


def apply_init_recipe(model: torch.nn.Module, recipe: dict) -> None:
    """Overwrite every parameter with `randn(shape, seed) * std`, as the fixtures were made."""
    params = dict(model.named_parameters())
    assert set(recipe) <= set(params), f"fixture names unknown parameters: {set(recipe) - set(params)}"
    with torch.no_grad():
        for name, entry in recipe.items():
            generator = torch.Generator().manual_seed(entry["seed"])
            value = torch.randn(entry["shape"], generator=generator) * entry["std"]
            assert params[name].shape == value.shape, name
            params[name].copy_(value)


def assert_matches_summary(tensor: torch.Tensor, summary: dict, name: str, rtol: float = RTOL,
                           atol: float = 0.0, entries: bool = True) -> None:
    """Shape, float64 norm and sum, and (`entries`) 64 sampled values of `tensor` against a
    fixture summary, each within `rtol` of its scale plus `atol`. The scale of the sum is at
    least the norm (some gradients sum to ~0 by construction); that of the sampled values is
    the largest of them."""
    t = tensor.detach().double()
    assert tuple(t.shape) == tuple(summary["shape"]), name
    norm, expected_norm = t.norm().item(), summary["norm"]
    assert abs(norm - expected_norm) <= rtol * expected_norm + atol, f"{name}: norm {norm} vs {expected_norm}"
    total = t.sum().item()
    assert abs(total - summary["sum"]) <= rtol * max(abs(summary["sum"]), expected_norm) + atol, \
        f"{name}: sum {total} vs {summary['sum']}"
    if entries:
        sampled = t.reshape(-1)[summary["idx"]]
        expected = summary["vals"].double()
        scale = expected.abs().max().item()
        error = (sampled - expected).abs().max().item()
        assert error <= rtol * scale + atol, f"{name}: sampled values differ by {error} (scale {scale})"


def assert_gradient_matches(grad: torch.Tensor, summary: dict, name: str, rtol: float = RTOL,
                            reference_norm: float | None = None, entries: bool = True) -> None:
    """A gradient against its summary, with an absolute tolerance of `rtol` times a norm besides
    the relative one: the gradient's own norm (a norm-wise relative error: no entry may be off
    by more than `rtol` of the norm), or `reference_norm` for a gradient that is zero up to
    rounding (a bias that BN removes: pass its weight gradient's norm).

    Why not relative to the largest sampled value alone: a max-pool window or a ReLU unit at a
    near-tie goes one way or the other with how the float32 convolution rounds, and single
    entries of the gradient with it. In the `cnn_pool` fixture a layer-2 window's two largest
    pre-activations are 1.5e-6 apart, and our float32 convolution of that layer is up to 1.7e-6
    off its float64 value: the released code (on its CPU) and ours pick different winners. That
    moves one sampled entry of the layer-2 weight gradient by 3e-6 of the gradient's norm, 4.4e-4
    of the largest sampled value. A real error (a missing step, a wrong scale) changes the whole
    tensor, which the norm and the sum see at `rtol`; a misplaced or transposed entry is
    off by about a typical entry, norm / sqrt(numel): 9 times this tolerance for the largest
    classifier weights (1.2M entries), twice it for the autoencoder's (19M).
    """
    atol = rtol * (summary["norm"] if reference_norm is None else reference_norm)
    assert_matches_summary(grad, summary, name, rtol, atol, entries)


def golden_model_and_objective(golden: dict, make_objective):
    """(config, model with the fixture's initial parameters, objective) of a golden case;
    `make_objective` is the entry script's (ccl/scripts.py)."""
    config = build_config(golden["config"], {}, {}, "golden config")
    logits = golden["steps"][0].get("logits")  # the autoencoder has none, and no classes
    num_classes = None if logits is None else logits.shape[1]
    model = build_model(config, input_shape=golden["x"].shape[1:], num_classes=num_classes)
    apply_init_recipe(model, golden["init"])
    return config, model, make_objective(config, num_classes)


def bn_removed_biases(model) -> dict[str, str]:
    """{bias: weight of the same map} for every map whose output goes through BN: in training
    mode BN subtracts each channel's batch mean, so the bias's gradient is zero up to rounding."""
    pairs = {}
    for index, layer in enumerate(model.layers, start=1):
        for side, position in (("fwd", layer.fw_bn_position), ("bwd", layer.bw_bn_position)):
            if position == BN_ON_OUTPUT and getattr(layer, side).bias is not None:
                pairs[f"layer{index}.{side}.bias"] = f"layer{index}.{side}.weight"
    return pairs


def _record_layer_outputs(model) -> list:
    """Each layer's output, in call order. Either rule runs every forward layer once per step;
    the feedback network goes through `DualLayer.feedback`, which no forward hook sees."""
    outputs = []
    for layer in model.layers:
        layer.register_forward_hook(lambda module, args, output: outputs.append(output))
    return outputs


def _record_signals(model) -> list:
    """The signal lists [b_0..b_L] that `model.feedback` returns."""
    signals = []
    feedback = model.feedback

    def recorded(*args, **kwargs):
        signals.append(feedback(*args, **kwargs))
        return signals[-1]

    model.feedback = recorded
    return signals


def _record_what_sgd_receives(optimizer: DualOptimizer, names: dict) -> dict:
    """{name: gradient} as both SGDs see it at their step: after centralisation and clipping."""
    received = {}

    def record(sgd, args, kwargs):
        received.update({names[p]: p.grad.clone() for group in sgd.param_groups
                         for p in group["params"] if p.grad is not None})

    for sgd in (optimizer.forward_sgd, optimizer.feedback_sgd):
        sgd.register_step_pre_hook(record)
    return received


def _assert_gradients_match(grads: dict, expected: dict, zero_biases: dict, what: str, **tolerance) -> None:
    assert set(grads) == set(expected), f"{what}: gradients of {sorted(set(grads) ^ set(expected))}"
    for name, grad in grads.items():
        weight = zero_biases.get(name)
        reference_norm = None if weight is None else expected[weight]["norm"]
        assert_gradient_matches(grad, expected[name], f"{what} {name}", reference_norm=reference_norm,
                                **tolerance)


def _assert_shapes_match(x: torch.Tensor, outputs: list, signals: list, expected: dict) -> None:
    assert [tuple(a.shape) for a in [x, *outputs]] == [tuple(s) for s in expected["act_shapes"]]
    feedback_runs = [] if expected["sig_shapes"] is None else [expected["sig_shapes"]]  # none under BP
    assert [[tuple(b.shape) for b in run] for run in signals] == \
        [[tuple(s) for s in shapes] for shapes in feedback_runs]


def _assert_output_matches(output: torch.Tensor, targets: torch.Tensor, expected: dict, step: int) -> None:
    if "logits" in expected:
        largest = expected["logits"].abs().max().item()
        torch.testing.assert_close(output, expected["logits"], rtol=RTOL, atol=RTOL * largest)
        assert F.cross_entropy(output, targets).item() == pytest.approx(expected["ce_loss"], rel=LOSS_RTOL)
    else:
        assert_matches_summary(output, expected["output"], f"step {step} output")
        assert F.mse_loss(output, targets).item() == pytest.approx(expected["mse_loss"], rel=LOSS_RTOL)


def _assert_bn_state_matches(model, expected: dict, step: int) -> None:
    """The running statistics and batch counts of the BN modules the model has."""
    buffers = dict(model.named_buffers())
    stats = {name for name in buffers if name.endswith(("running_mean", "running_var"))}
    assert stats == set(expected["bn_stats_after"]), f"step {step}: BN modules differ"
    for name in stats:
        assert_matches_summary(buffers[name], expected["bn_stats_after"][name], f"step {step} {name}",
                               rtol=BN_STATS_RTOL)
    tracked = {name.removesuffix(".num_batches_tracked"): int(count) for name, count in buffers.items()
               if name.endswith("num_batches_tracked")}
    assert tracked == expected["bn_batches_tracked"], f"step {step}"


def assert_steps_match(golden: dict, config, model, task, late_gradients_by_norm: bool = False) -> None:
    """Run the fixture's steps of `config.method` on its batch, as the training loop does
    (loss, its warm-up-scaled backward, `DualOptimizer.step`), and compare the initial parameters, shapes, the
    output and losses, the raw gradients of step 0 (of the warm-up-scaled loss, as released),
    what SGD receives, the parameters and the BN state after every step, with what the fixture
    has of these. `late_gradients_by_norm`: compare gradients after step 0 by norm and sum only,
    to LATE_GRAD_RTOL (ReLU nets with BN)."""
    params = dict(model.named_parameters())
    for name, param in params.items():
        assert_matches_summary(param, golden["params_before"][name], f"initial {name}", rtol=PARAM_RTOL)
    rule = RULES[config.method]
    optimizer = DualOptimizer(model, config)
    received = _record_what_sgd_receives(optimizer, {p: name for name, p in params.items()})
    outputs, signals = _record_layer_outputs(model), _record_signals(model)
    zero_biases = bn_removed_biases(model)
    x = golden["x"]
    targets = golden.get("y", x)  # the autoencoder reconstructs its input (task_transform same)
    for index, expected in enumerate(golden["steps"]):
        for record in (outputs, signals, received):
            record.clear()
        loss = rule.loss(model, task, x, targets)
        assert loss.item() == pytest.approx(expected["total_loss"], rel=LOSS_RTOL), f"step {index}"
        _assert_shapes_match(x, outputs, signals, expected)
        _assert_output_matches(outputs[-1], targets, expected, index)
        optimizer.warmup_scaled(loss).backward()
        if expected["raw_grads"] is not None:
            raw = {name: p.grad for name, p in params.items() if p.grad is not None}
            _assert_gradients_match(raw, expected["raw_grads"], zero_biases, f"step {index} raw")
        optimizer.step()
        if "final_grads" in expected:
            late = late_gradients_by_norm and index > 0
            _assert_gradients_match(received, expected["final_grads"], zero_biases, f"step {index} final",
                                    rtol=LATE_GRAD_RTOL if late else RTOL, entries=not late)
        for name, param in params.items():
            assert_matches_summary(param, expected["params_after"][name], f"step {index} {name}",
                                   rtol=PARAM_RTOL)
        if "bn_stats_after" in expected:
            _assert_bn_state_matches(model, expected, index)
