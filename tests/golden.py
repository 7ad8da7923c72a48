"""Helpers to compare against the golden fixtures of the released code (tests/fixtures/)."""
from __future__ import annotations

from pathlib import Path

import torch

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
