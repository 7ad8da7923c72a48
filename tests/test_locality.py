"""CCL is layer-local: each map's gradient comes only from its own pair, through no other layer.

Forward map l is trained by pair l (a_l vs b_l); feedback map l by pair l-1 (a_{l-1} vs b_{l-1}).
So the gradient of forward map l cannot depend on the forward maps above it, nor the gradient of
feedback map l on the feedback maps below it. Backprop, the control, fails the first property.
"""
import pytest
import torch
from golden import load_fixture

from ccl.config import build_config
from ccl.rules import bp_loss, ccl_loss
from ccl.scripts import mlp_objective as make_task
from models import LayerOptions, mlp

SIZES = [20, 16, 16, 16, 5]


def _setup(seed=0):
    torch.manual_seed(seed)
    config = build_config(load_fixture("mlp_mnist_ccl.pt")["config"], {}, {}, "test")
    model = mlp(SIZES, LayerOptions())
    x, y = torch.randn(12, SIZES[0]), torch.randint(0, SIZES[-1], (12,))
    return model, make_task(config, SIZES[-1]), x, y


def _grads(rule, model, task, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    rule(model, task, x, y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _perturb(model, names):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names:
                p.add_(torch.randn_like(p))


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_forward_gradient_ignores_forward_layers_above(layer):
    model, task, x, y = _setup()
    before = _grads(ccl_loss, model, task, x, y)
    _perturb(model, {f"layer{k}.fwd.weight" for k in range(layer + 1, len(SIZES))})
    after = _grads(ccl_loss, model, task, x, y)
    torch.testing.assert_close(after[f"layer{layer}.fwd.weight"], before[f"layer{layer}.fwd.weight"],
                               rtol=0, atol=0)


@pytest.mark.parametrize("layer", [2, 3, 4])
def test_feedback_gradient_ignores_feedback_layers_below(layer):
    model, task, x, y = _setup()
    before = _grads(ccl_loss, model, task, x, y)
    _perturb(model, {f"layer{k}.bwd.weight" for k in range(1, layer)})
    after = _grads(ccl_loss, model, task, x, y)
    torch.testing.assert_close(after[f"layer{layer}.bwd.weight"], before[f"layer{layer}.bwd.weight"],
                               rtol=0, atol=0)


def test_backprop_control_is_not_local():
    """The same probe detects non-locality: under BP layer 1 hears from the layers above."""
    model, task, x, y = _setup()
    before = _grads(bp_loss, model, task, x, y)
    _perturb(model, {"layer2.fwd.weight", "layer3.fwd.weight"})
    after = _grads(bp_loss, model, task, x, y)
    assert not torch.allclose(after["layer1.fwd.weight"], before["layer1.fwd.weight"])


def test_each_map_gets_exactly_its_own_pairs_gradient():
    """The gradient of the whole CCL loss equals, map by map, the gradient of the one pair loss
    that map feeds, computed on detached inputs: nothing leaks between layers."""
    model, task, x, y = _setup()
    total = _grads(ccl_loss, model, task, x, y)
    activations = model(x, detach=True)
    signals = model.feedback(task.feedback_input(y), detach=True)
    onehot = torch.nn.functional.one_hot(y, SIZES[-1]).float()
    top = len(SIZES) - 1
    for layer in range(1, top + 1):
        fwd, bwd = model.get_submodule(f"layer{layer}").fwd.weight, model.get_submodule(f"layer{layer}").bwd.weight
        a, b = activations[layer], signals[layer]
        own_forward = (torch.nn.functional.cross_entropy(a, y) if layer == top
                       else task.pair_loss(a, b, onehot, None))
        expected_fwd, = torch.autograd.grad(own_forward, fwd, retain_graph=True)
        torch.testing.assert_close(total[f"layer{layer}.fwd.weight"], expected_fwd)
        own_feedback = task.pair_loss(activations[layer - 1], signals[layer - 1], onehot, None)
        expected_bwd, = torch.autograd.grad(own_feedback, bwd, retain_graph=True)
        torch.testing.assert_close(total[f"layer{layer}.bwd.weight"], expected_bwd)
