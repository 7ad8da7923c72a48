"""`fused_pair_loss: 1`: the CNN pair loss with its gradient in closed form is the released loss
up to rounding. In float64 the values and gradients agree with the released formulation's
(flooded rows included) and the backward with finite differences; in float32 it reproduces the
released code's golden CNN steps; a CNN run trains with it, in float32 and under bf16."""
import json

import pytest
import torch
from conftest import REPO
from golden import assert_steps_match, golden_model_and_objective, load_fixture

import ccl.experiment as experiment
from ccl.bench.cases import load_config
from ccl.losses import cnn_pair_loss, fused_cnn_pair_loss
from ccl.scripts import CNN, cnn_objective

pytestmark = pytest.mark.usefixtures("one_thread")
SCALES = {"loss_scale_C": 0.7, "loss_scale_ssl": 0.3}


def conv_pair(batch=32, classes=10, seed=0):
    """Activations and feedback signals shaped like a conv layer's, and one-hot labels."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, 4, 5, 5, generator=generator, dtype=torch.float64).requires_grad_()
    b = torch.randn(classes, 4, 5, 5, generator=generator, dtype=torch.float64).requires_grad_()
    labels = torch.randint(0, classes, (batch,), generator=generator)
    onehot = torch.zeros(batch, classes, dtype=torch.float64).scatter_(1, labels[:, None], 1.0)
    return a, b, onehot


@pytest.mark.parametrize("flooded", [False, True])
def test_value_and_gradients_equal_the_released_loss(flooded):
    a, b, onehot = conv_pair()
    keep = None
    if flooded:
        keep = torch.ones(len(a), dtype=torch.float64)
        keep[::3] = 0.0  # rows zeroed before the normalisation, as flooding does
    results = []
    for pair_loss in (cnn_pair_loss, fused_cnn_pair_loss):
        loss = pair_loss(a, b, onehot, keep, **SCALES)
        results.append((loss, *torch.autograd.grad(loss * 1.7, (a, b))))
    for released, fused in zip(*results):
        torch.testing.assert_close(fused, released, rtol=1e-12, atol=1e-15)
    if flooded:
        assert results[1][1][::3].abs().max() == 0  # a flooded sample gets no gradient


def test_backward_agrees_with_finite_differences():
    a, b, onehot = conv_pair(batch=6, classes=3)
    assert torch.autograd.gradcheck(
        lambda a, b: fused_cnn_pair_loss(a, b, onehot, **SCALES), (a, b))


def test_golden_cnn_steps_are_reproduced():
    golden = load_fixture("cnn_cifar10_ccl.pt")

    def make_task(config, num_classes):
        return cnn_objective(config.replace(fused_pair_loss=1), num_classes)

    config, model, task = golden_model_and_objective(golden, make_task)
    assert task.pair_loss.func is fused_cnn_pair_loss
    assert_steps_match(golden, config, model, task)


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_a_cnn_run_trains_with_it(tiny_cnn_data, tmp_path, precision):
    data_root, _ = tiny_cnn_data
    results = {}
    for fused in ("0", "1"):
        out = tmp_path / fused
        assert experiment.main(CNN, [
            "--yaml", str(REPO / "yaml/cnn/mnist_ccl.yaml"), "--data_root", str(data_root),
            "--out_dir", str(out), "--epochs", "1", "--batchsize", "8", "--train_batches_per_epoch", "2",
            "--device", "cpu", "--precision", precision, "--fused_pair_loss", fused]) == 0
        results[fused] = json.loads((out / "results.json").read_text())
        assert results[fused]["status"] == "finished"
    tolerance = 1e-4 if precision == "float32" else 0.05
    assert results["1"]["test_loss"] == pytest.approx(results["0"]["test_loss"], rel=tolerance)


def test_bp_warns_that_it_ignores_the_key():
    config, script = load_config("yaml/cnn/mnist_bp.yaml", {"fused_pair_loss": 1})
    assert script.warnings(config) == [
        "fused_pair_loss is ignored with method BP: only CCL reads it"]
