"""Helpers to compare against the golden fixtures of the released code (tests/fixtures/)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ccl.optim import DualOptimizer
from ccl.rules import ccl_loss
from models import build_model
from ccl.config import build_config

FIXTURES = Path(__file__).parent / "fixtures"
RTOL = 1e-4


def load_fixture(name: str):
    return torch.load(FIXTURES / name, weights_only=True)


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


def assert_matches_summary(tensor: torch.Tensor, summary: dict, name: str, rtol: float = RTOL) -> None:
    """Shape, float64 sum and norm, and 64 sampled values of `tensor` against a fixture summary.
    The sum is compared relative to the norm: some gradients sum to ~0 by construction."""
    t = tensor.detach().double()
    assert tuple(t.shape) == tuple(summary["shape"]), name
    norm = summary["norm"]
    assert abs(t.norm().item() - norm) <= rtol * norm, f"{name}: norm {t.norm().item()} vs {norm}"
    assert abs(t.sum().item() - summary["sum"]) <= rtol * max(abs(summary["sum"]), norm), \
        f"{name}: sum {t.sum().item()} vs {summary['sum']}"
    sampled = t.reshape(-1)[summary["idx"]]
    expected = summary["vals"].double()
    scale = expected.abs().max().item()
    error = (sampled - expected).abs().max().item()
    assert error <= rtol * scale, f"{name}: sampled values differ by {error} (scale {scale})"


def golden_model_and_task(golden: dict, make_task):
    """(config, model with the fixture's initial parameters, task) of a golden case; `make_task`
    is the entry script's."""
    config = build_config(golden["config"], {}, {}, "golden config")
    num_classes = golden["steps"][0]["logits"].shape[1]
    model = build_model(config, input_shape=golden["x"].shape[1:], num_classes=num_classes)
    apply_init_recipe(model, golden["init"])
    return config, model, make_task(config, num_classes)


def assert_ccl_steps_match(golden: dict, config, model, task) -> None:
    """Run the fixture's CCL steps on its batch and compare shapes, logits, losses, the raw
    gradients of step 0 (of the warm-up-scaled loss, as released) and the parameters after
    every step."""
    optimizer = DualOptimizer(model, config)
    x, y = golden["x"], golden["y"]
    params = dict(model.named_parameters())
    for index, expected in enumerate(golden["steps"]):
        activations = model(x, detach=True)
        signals = model.feedback(task.feedback_input(y), detach=True)
        assert [tuple(a.shape) for a in activations] == [tuple(s) for s in expected["act_shapes"]]
        assert [tuple(b.shape) for b in signals] == [tuple(s) for s in expected["sig_shapes"]]
        torch.testing.assert_close(activations[-1], expected["logits"], rtol=1e-4, atol=1e-5)
        assert F.cross_entropy(activations[-1], y).item() == pytest.approx(expected["ce_loss"], rel=1e-4)

        loss = ccl_loss(model, task, x, y)
        assert loss.item() == pytest.approx(expected["total_loss"], rel=1e-4), f"step {index}"
        if expected["raw_grads"] is not None:
            scaled = loss * optimizer.warmup_factor()
            grads = torch.autograd.grad(scaled, list(params.values()), retain_graph=True)
            for (name, _), grad in zip(params.items(), grads):
                assert_matches_summary(grad, expected["raw_grads"][name], f"grad {name}")
        optimizer.warmup_scaled(loss).backward()
        optimizer.step()
        for name, param in params.items():
            assert_matches_summary(param, expected["params_after"][name], f"step {index} {name}")
