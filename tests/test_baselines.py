"""The baseline rules FA, DFA and DRTP (ccl/rules.py, ccl/fixed_feedback.py).

FA with the exact adjoint as its fixed feedback is backprop, on the MLP and both CNNs; so is
DFA on one hidden layer whose projection is the output weight. DFA and DRTP are layer-local.
Every rule trains the output layer as backprop does, none of the three trains the feedback
network, their fixed matrices come from the seed, survive a resume and leave BP and CCL alone.
Their configs train, main_ae.py refuses them, and `--flops` counts what the arithmetic says.
"""
import itertools
import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from golden import load_fixture
from runs import outcome, run_mlp, with_loss

import ccl.experiment as experiment
from ccl.bench.cli import main as bench
from ccl.bench.flops import step_flops
from ccl.config import build_config
from ccl.fixed_feedback import direct_feedback, feedback_weight_as_forward
from ccl.optim import DualOptimizer
from ccl.rules import RULES, add_fixed_state, bp_loss, dfa_loss, drtp_loss, fa_loss, output_error
from ccl.scripts import AUTOENCODER, CNN
from ccl.scripts import mlp_objective as make_task
from models import LayerOptions, cnn, mlp

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [20, 16, 16, 16, 5]
BATCHES = 17  # per epoch of the tiny MNIST runs: 540 training images in batches of 32
BASELINES = ("FA", "DFA", "DRTP")
DIRECT = {"DFA": dfa_loss, "DRTP": drtp_loss}
# the rules whose output layer learns from the cross-entropy (target propagation, tests/test_target_prop.py,
# moves it toward a target instead)
CROSS_ENTROPY_RULES = ("BP", "CCL", *BASELINES)
NEW_CONFIGS = [f"{data}_{rule}" for data in ("mnist", "fmnist", "cifar10", "cifar100")
               for rule in ("fa", "dfa", "drtp")]


def _config(**changes):
    return build_config(load_fixture("mlp_mnist_ccl.pt")["config"], changes, {}, "test")


def _add_fixed_state(config, model, input_shape, num_classes) -> None:
    add_fixed_state(RULES[config.method], model, input_shape, num_classes, config.seed)


def _mlp(sizes=SIZES, method="DFA", seed=0):
    """An MLP with the fixed matrices of `method`, a batch, and the MLP script's task."""
    torch.manual_seed(seed)
    model = mlp(sizes, LayerOptions())
    config = _config(method=method)
    _add_fixed_state(config, model, (sizes[0],), sizes[-1])
    x, y = torch.randn(12, sizes[0]), torch.randint(0, sizes[-1], (12,))
    return model, make_task(config, sizes[-1]), x, y


def _cnn(pooled: bool, fw_bn: int, method="DFA"):
    torch.manual_seed(0)
    model = cnn(3, 10, LayerOptions(fw_bn=fw_bn, bias_init="none"), pooled=pooled)
    _add_fixed_state(_config(method=method), model, (3, 32, 32), 10)
    return model, make_task(_config(), 10), torch.randn(3, 3, 32, 32), torch.randint(0, 10, (3,))


NETWORKS = {  # the MLP, the strided `cnn` (biases; BN on the map's input or output), `cnn_pool`
    "mlp": lambda: _mlp(),
    "cnn-bn-input": lambda: _cnn(pooled=False, fw_bn=1),
    "cnn-bn-output": lambda: _cnn(pooled=False, fw_bn=2),
    "cnn_pool": lambda: _cnn(pooled=True, fw_bn=0),
}


def _grads(rule, model, task, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    rule(model, task, x, y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _forward_grads(grads: dict) -> dict:
    return {name: g for name, g in grads.items() if ".fwd." in name}


def _adjoint_feedback(model) -> None:
    """Every feedback weight set to the exact adjoint of its forward weight."""
    with torch.no_grad():
        for layer in model.layers:
            weight = layer.fwd.weight
            layer.bwd.weight.copy_(weight.T if weight.dim() == 2 else weight.transpose(0, 1).flip(2, 3))


def _top(model) -> str:
    return f"layer{len(model.layers)}.fwd.weight"


# --- FA ----------------------------------------------------------------------------------------

def test_a_feedback_conv_is_the_transposed_conv_of_its_flipped_kernel():
    """conv2d(., V) == conv_transpose2d(., V.transpose(0, 1).flip(2, 3)) at stride 1, padding 1:
    the reading FA gives a feedback conv's weight."""
    torch.manual_seed(0)
    feedback, signal = torch.randn(3, 5, 3, 3), torch.randn(2, 5, 8, 8)
    torch.testing.assert_close(F.conv2d(signal, feedback, padding=1),
                               F.conv_transpose2d(signal, feedback_weight_as_forward(feedback), padding=1))


@pytest.mark.parametrize("network", NETWORKS)
def test_fa_with_the_adjoint_as_feedback_is_backprop(network):
    model, task, x, y = NETWORKS[network]()
    _adjoint_feedback(model)
    bp, fa = _grads(bp_loss, model, task, x, y), _grads(fa_loss, model, task, x, y)
    assert fa.keys() == bp.keys() and not any(".bwd." in name for name in fa)
    for name in bp:  # biases under BatchNorm have a zero gradient, up to rounding
        torch.testing.assert_close(fa[name], bp[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("network", NETWORKS)
def test_fa_with_random_feedback_is_not_backprop(network):
    """The control: the probe above sees the feedback (layer 1's gradient depends on it)."""
    model, task, x, y = NETWORKS[network]()
    bp, fa = _grads(bp_loss, model, task, x, y), _grads(fa_loss, model, task, x, y)
    assert not torch.allclose(fa["layer1.fwd.weight"], bp["layer1.fwd.weight"], rtol=1e-3)


# --- DFA and DRTP ------------------------------------------------------------------------------

def test_dfa_with_the_output_weight_as_projection_is_backprop():
    model, task, x, y = _mlp([20, 16, 5])
    with torch.no_grad():
        direct_feedback(model)[0].copy_(model.layer2.fwd.weight)  # C x D_1, as W_2
    torch.testing.assert_close(_grads(dfa_loss, model, task, x, y),
                               _forward_grads(_grads(bp_loss, model, task, x, y)))


@pytest.mark.parametrize("method", DIRECT)
@pytest.mark.parametrize("layer", [1, 2])
def test_direct_rules_ignore_the_hidden_layers_above(method, layer):
    """Same input, same output error (a zero output weight fixes the logits at 0 for DFA; DRTP
    reads only the target): the gradient of layer l does not move when the hidden layers above
    it change."""
    model, task, x, y = _mlp()
    top = len(model.layers)
    with torch.no_grad():
        model.get_submodule(f"layer{top}").fwd.weight.zero_()
    name = f"layer{layer}.fwd.weight"
    before = _grads(DIRECT[method], model, task, x, y)[name]
    with torch.no_grad():
        for above in range(layer + 1, top):
            weight = model.get_submodule(f"layer{above}").fwd.weight
            weight.add_(torch.randn_like(weight))
    torch.testing.assert_close(_grads(DIRECT[method], model, task, x, y)[name], before, rtol=0, atol=0)


@pytest.mark.parametrize("method", DIRECT)
def test_each_hidden_layer_learns_from_its_input_and_its_signal_alone(method):
    """The gradient of every hidden layer equals that of its own map on its (detached) input
    with the rule's signal at its output: e @ B_l (DFA) or one-hot @ B_l / N (DRTP)."""
    model, task, x, y = _mlp()
    grads = _grads(DIRECT[method], model, task, x, y)
    activations = model(x, detach=True)
    onehot = F.one_hot(y, SIZES[-1]).float()
    message = output_error(activations[-1], y) if method == "DFA" else onehot / len(y)
    for index, projection in enumerate(direct_feedback(model), start=1):
        layer = getattr(model, f"layer{index}")
        own = (layer(activations[index - 1].detach()) * (message @ projection)).sum()
        expected, = torch.autograd.grad(own, layer.fwd.weight)
        torch.testing.assert_close(grads[f"layer{index}.fwd.weight"], expected)


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("method", DIRECT)
def test_direct_rules_run_on_every_network(network, method):
    """Conv layers take their projection reshaped to their output maps; every forward map
    learns, no feedback map does, and the loss is the output loss alone."""
    model, task, x, y = NETWORKS[network]()  # DFA's projections: DRTP reads the same buffers
    grads = _grads(DIRECT[method], model, task, x, y)
    assert {name for name in grads if ".fwd.weight" in name} == \
        {name for name, _ in model.named_parameters() if ".fwd.weight" in name}
    assert not any(".bwd." in name for name in grads)
    assert DIRECT[method](model, task, x, y).item() == bp_loss(model, task, x, y).item()


# --- every rule ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", CROSS_ENTROPY_RULES)
def test_every_rule_trains_the_output_layer_as_backprop(method):
    model, task, x, y = _mlp()
    grads = _grads(RULES[method].loss, model, task, x, y)
    torch.testing.assert_close(grads[_top(model)], _grads(bp_loss, model, task, x, y)[_top(model)])


@pytest.mark.parametrize("method", BASELINES)
def test_the_feedback_network_never_trains_under_a_baseline(method):
    """Through real steps with weight decay and momentum on both sides, a feedback learning
    rate and gradient centralisation: the feedback network and the fixed projections stay put,
    the forward network learns."""
    config = _config(method=method, lr_B=0.5, mmt_B=0.9, wd_B=0.1, mmt_F=0.9, wd_F=1e-3, GradC=1)
    model, task, x, y = _mlp(method=method)
    fixed = {name: t.clone() for name, t in model.state_dict().items() if ".bwd." in name or "direct" in name}
    forward = [p.detach().clone() for p in model.forward_parameters()]
    optimizer = DualOptimizer(model, config)
    for _ in range(3):
        RULES[method].loss(model, task, x, y).backward()
        optimizer.step()
    state = model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in fixed.items())
    assert all(not torch.equal(p, q) for p, q in zip(model.forward_parameters(), forward))


def test_the_fixed_projections_come_from_the_seed_alone():
    """Their own generator: the same matrices for the same seed, others for another seed, and
    the global stream (the weights' init) untouched, so BP and CCL runs are unchanged."""
    def projections(seed):
        model = mlp(SIZES, LayerOptions())
        state = torch.get_rng_state()
        _add_fixed_state(_config(method="DRTP", seed=seed), model, (SIZES[0],), SIZES[-1])
        assert torch.equal(torch.get_rng_state(), state)
        return [t.clone() for t in direct_feedback(model)]

    first, again, other = projections(1), projections(1), projections(2)
    assert [t.shape for t in first] == [(SIZES[-1], size) for size in SIZES[1:-1]]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("method", ("BP", "CCL", "FA"))
def test_rules_without_projections_keep_the_state_dict(method):
    model = mlp(SIZES, LayerOptions())
    keys = list(model.state_dict())
    _add_fixed_state(_config(method=method), model, (SIZES[0],), SIZES[-1])
    assert list(model.state_dict()) == keys


# --- runs: resume, reproducibility, configs, refusals ------------------------------------------

def sigterm_at_step(monkeypatch, method: str, at_step: int) -> None:
    """Send this process SIGTERM while global step `at_step` (1-based) computes its loss."""
    steps = itertools.count(1)

    def rule(original, *args):
        if next(steps) == at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    monkeypatch.setitem(RULES, method, with_loss(method, rule))


def _run_args(data_root, out, config="mnist_dfa", *extra):
    return ["--yaml", str(REPO / f"yaml/mlp/{config}.yaml"), "--data_root", str(data_root),
            "--epochs", "2", "--batchsize", "32", "--device", "cpu", "--out_dir", str(out), *extra]


@pytest.mark.parametrize("method", BASELINES)
def test_a_stopped_baseline_run_resumes_exactly(tiny_mnist, tmp_path, monkeypatch, method):
    data_root, _ = tiny_mnist
    config = f"mnist_{method.lower()}"
    assert run_mlp(*_run_args(data_root, tmp_path / "whole", config)) == 0
    out = tmp_path / "stopped"
    rule = RULES[method]
    sigterm_at_step(monkeypatch, method, BATCHES + 5)
    assert run_mlp(*_run_args(data_root, out, config)) == 128 + signal.SIGTERM
    monkeypatch.setitem(RULES, method, rule)
    assert run_mlp("--resume", str(out)) == 0
    assert outcome(out) == outcome(tmp_path / "whole")
    if method in DIRECT:  # the run's projections are the seed's, in best.pt and checkpoint.pt
        model = mlp([784, 256, 256, 256, 256, 256, 10], LayerOptions())
        _add_fixed_state(_config(method=method, seed=2023), model, (784,), 10)
        best = torch.load(out / "best.pt", weights_only=True)
        checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
        for index, matrix in enumerate(direct_feedback(model), start=1):
            name = f"direct_feedback{index}"
            assert torch.equal(best[name], matrix) and torch.equal(checkpoint[name], matrix)


@pytest.mark.parametrize("method", BASELINES)
def test_a_baseline_run_is_identical_given_its_seed(tiny_mnist, tmp_path, method):
    data_root, _ = tiny_mnist
    config = f"mnist_{method.lower()}"
    for name in ("a", "b"):
        assert run_mlp(*_run_args(data_root, tmp_path / name, config, "--epochs", "1")) == 0
    assert outcome(tmp_path / "a") == outcome(tmp_path / "b")


@pytest.mark.parametrize("config", NEW_CONFIGS)
def test_every_baseline_config_trains_a_step(tiny_cnn_data, tmp_path, config):
    data_root, _ = tiny_cnn_data
    out = tmp_path / "run"
    assert run_mlp("--yaml", str(REPO / f"yaml/mlp/{config}.yaml"), "--data_root", str(data_root),
                   "--epochs", "1", "--batchsize", "8", "--train_batches_per_epoch", "1",
                   "--device", "cpu", "--out_dir", str(out)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["steps"] == 1


@pytest.mark.parametrize("config", ["mnist_bp", "cifar10_ccl"])  # the `cnn` and `cnn_pool` networks
@pytest.mark.parametrize("method", BASELINES)
def test_the_cnn_script_trains_the_baselines(tiny_cnn_data, tmp_path, config, method):
    data_root, _ = tiny_cnn_data
    out = tmp_path / "run"
    assert experiment.main(CNN, [
        "--yaml", str(REPO / f"yaml/cnn/{config}.yaml"), "--method", method, "--lr_B", "0",
        "--data_root", str(data_root), "--out_dir", str(out), "--epochs", "1", "--batchsize", "2",
        "--train_batches_per_epoch", "1", "--device", "cpu"]) == 0
    assert json.loads((out / "results.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("method", BASELINES)
def test_the_autoencoder_refuses_the_baselines(tmp_path, capsys, method):
    assert experiment.main(AUTOENCODER, ["--yaml", str(REPO / "yaml/cnn_ae/stl10_ccl_legacy.yaml"),
                                         "--method", method, "--out_dir", str(tmp_path / "run")]) == 2
    assert f"main_ae.py takes method BP or CCL, not '{method}'" in capsys.readouterr().err


def test_an_unknown_method_is_refused(tmp_path, capsys):
    assert run_mlp("--yaml", str(REPO / "yaml/mlp/mnist_fa.yaml"), "--method", "DTP-BN",
                   "--out_dir", str(tmp_path / "run")) == 2
    assert ("method must be one of BP, CCL, FA, DFA, DRTP, DTP, DRL, L-DRL, FW-DTP, FWDTP-BN; got 'DTP-BN'"
            in capsys.readouterr().err)


@pytest.mark.parametrize("method", BASELINES)
def test_a_feedback_learning_rate_is_warned_about(tiny_mnist, tmp_path, capsys, method):
    data_root, _ = tiny_mnist
    assert run_mlp(*_run_args(data_root, tmp_path / "run", f"mnist_{method.lower()}", "--epochs", "1",
                              "--lr_B", "0.5")) == 0
    assert (f"warning: lr_B 0.5 is ignored with method {method}: the feedback network never trains"
            in capsys.readouterr().err)


def test_fa_refuses_compile(tmp_path, capsys):
    assert run_mlp("--yaml", str(REPO / "yaml/mlp/mnist_fa.yaml"), "--compile", "1",
                   "--out_dir", str(tmp_path / "run")) == 2
    assert "compile 1 does not support method FA" in capsys.readouterr().err


# --- FLOPs ---------------------------------------------------------------------------------------

def hand_count(sizes, method: str, batch: int) -> float:
    """FLOPs per sample of a step of the MLP `sizes` (2 per multiply-add of a product).

    forward and weight gradients: 2 M each (M = the multiply-adds of one sample's forward pass);
    BP and FA also pass the error to every layer's input but the first: 2 (M - s0 s1);
    DFA projects the output error e (N x C) to every hidden layer: 2 C sum(hidden sizes);
    DRTP picks rows of its projections: nothing; CCL runs the feedback network on C one-hot
    vectors per batch (forward and weight gradients: 2 M C / N each) and per pair l = 0..L-1
    forms A @ B.T (2 C s_l) and its two gradients (4 C s_l), but none for the input A_0.
    """
    classes = sizes[-1]
    multiply_adds = sum(a * b for a, b in itertools.pairwise(sizes))
    base = 4 * multiply_adds
    extra = {"BP": 2 * (multiply_adds - sizes[0] * sizes[1]),
             "FA": 2 * (multiply_adds - sizes[0] * sizes[1]),
             "DFA": 2 * classes * sum(sizes[1:-1]),
             "DRTP": 0,
             "CCL": 4 * multiply_adds * classes / batch + 6 * classes * sum(sizes[:-1])
             - 2 * classes * sizes[0]}
    return base + extra[method]


@pytest.mark.parametrize("method", CROSS_ENTROPY_RULES)
def test_the_flops_of_a_tiny_mlp_step_are_the_hand_count(method):
    sizes, batch = [6, 5, 4, 3], 4
    model, task, _, _ = _mlp(sizes, method)
    x, y = torch.randn(batch, sizes[0]), torch.randint(0, sizes[-1], (batch,))
    optimizer = DualOptimizer(model, _config(method=method))
    loss_flops, backward_flops, update_flops = step_flops(
        lambda inputs, targets: RULES[method].loss(model, task, inputs, targets), optimizer, x, y)
    assert (loss_flops + backward_flops) / batch == hand_count(sizes, method, batch)
    assert update_flops == 0  # elementwise: FlopCounterMode counts products only


def test_the_flops_command_counts_table_2(tmp_path, capsys):
    """The MNIST MLP at batch 32: BP 2.39 and CCL 2.55 million FLOPs per sample, as the paper."""
    out = tmp_path / "flops.json"
    assert bench(["--flops", "--archs", "mlp_mnist", "--device", "cpu", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["flops"]
    assert [r["method"] for r in records] == ["BP", "CCL", "FA", "DFA", "DRTP"]
    sizes = [784, 256, 256, 256, 256, 256, 10]
    for record in records:
        assert (record["arch"], record["batch"]) == ("mlp_mnist", 32)
        assert record["mflops_per_sample"] == pytest.approx(hand_count(sizes, record["method"], 32) / 1e6,
                                                           rel=1e-12)
    assert round(records[0]["mflops_per_sample"], 2) == records[0]["paper_mflops_per_sample"] == 2.39
    assert round(records[1]["mflops_per_sample"], 2) == records[1]["paper_mflops_per_sample"] == 2.55
    assert "paper /BP" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--flops", "--numerics"], "--flops is a measurement of its own"),
    (["--flops", "--compile", "1"], "leave out --compile"),
    (["--flops", "--repeats", "2"], "--repeats do not apply to --flops"),
])
def test_bad_flops_settings_are_refused(args, message, capsys):
    assert bench([*args, "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err
