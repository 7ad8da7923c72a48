"""Target propagation (ccl/target_prop.py) beyond the golden numerics: each loss moves only its
layer's weights, FW-DTP's feedback never moves, the noise comes from the seed, the released
initialisation, the configs, and short runs of every method through main_class_mlp.py that
resume bit-identical."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import REPO
from runs import outcome, run_mlp, with_loss

from ccl import target_prop
from ccl.config import build_config, read_yaml_sections
from ccl.rules import RULES
from ccl.target_prop import FeedbackPhase
from models.layers import LayerOptions, batch_standardise
from models.mlp import initialise_orthogonal, mlp

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [12, 9, 8, 7, 5]
FILES = {"DTP": "dtp", "DRL": "drl", "L-DRL": "ldrl", "FW-DTP": "fwdtp", "FWDTP-BN": "fwdtp_bn"}
TRAINED = ("DTP", "DRL", "L-DRL")
METHODS = tuple(FILES)


def _chi(method: str):
    return batch_standardise if method == "FWDTP-BN" else target_prop.identity


def _phase(config, model, **kwargs) -> FeedbackPhase:
    return RULES[config.method].feedback_phase(config, model, **kwargs)


def _config(method: str, data: str = "mnist", **changes):
    path = REPO / "yaml" / "mlp" / f"{data}_{FILES[method]}.yaml"
    return build_config(read_yaml_sections(path), changes, {}, str(path))


def _model(method: str, seed: int = 0, **changes):
    config = _config(method, seed=seed, lr_B=0.1 if method in TRAINED else 0.0, **changes)
    model = mlp(SIZES, LayerOptions.from_config(config))
    initialise_orthogonal(model, 0.3, seed)  # feedback large enough for the losses to matter
    torch.manual_seed(seed)
    x, y = torch.randn(16, SIZES[0]), torch.randint(0, SIZES[-1], (16,))
    return config, model, x, y


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _moved(before: dict, model) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}


# --- locality -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_each_forward_loss_reaches_only_its_layers_forward_weight(method):
    config, model, x, y = _model(method)
    result = target_prop.forward_pass(model, x, y, config.tp_step_size, _chi(method))
    for index, loss in enumerate(result.layer_losses, start=1):
        grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)
        reached = {name for (name, _), grad in zip(model.named_parameters(), grads)
                   if grad is not None and grad.abs().sum() > 0}
        assert reached == {f"layer{index}.fwd.weight"}


@pytest.mark.parametrize("method", TRAINED)
def test_each_feedback_update_moves_only_its_layers_feedback_weight(method):
    config, model, x, _ = _model(method)
    phase = _phase(config, model)
    layers, activations = model.layers, model(x)
    activations = [a.detach() for a in activations]
    for l in range(len(layers), 1, -1):
        loss = phase.feedback_loss(layers, l, activations, phase.draw, phase.chi)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        reached = {name for (name, _), grad in zip(model.named_parameters(), grads)
                   if grad is not None and grad.abs().sum() > 0}
        # DRL's loss also depends on the feedback weights above l, but only V_l is updated with it
        assert f"layer{l}.bwd.weight" in reached and not any(".fwd." in name for name in reached)
    before = _weights(model)
    steps = phase.call(x)
    assert [step.layer for step in steps] == [4, 3, 2]
    assert _moved(before, model) == {f"layer{l}.bwd.weight" for l in (4, 3, 2)}


@pytest.mark.parametrize("method", ("FW-DTP", "FWDTP-BN"))
def test_fixed_weight_dtp_never_moves_its_feedback(method):
    config, model, x, y = _model(method)
    assert RULES[method].feedback_phase is None  # no feedback call, no noise
    RULES[method].loss_of(config)(model, None, x, y).backward()
    assert all(p.grad is None for p in model.feedback_parameters())


# --- noise ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", TRAINED)
def test_the_noise_comes_from_the_seed_and_its_state_resumes(method):
    def run(seed, split=False):
        config, model, x, _ = _model(method)
        phase = _phase(config, model, seed=seed)
        phase.call(x)
        if split:  # a new phase restored from the first one's state
            state = phase.state_dict()
            phase = _phase(config, model, seed=seed + 1)
            phase.load_state_dict(state)
        phase.call(x)
        return torch.cat([p.detach().reshape(-1) for p in model.feedback_parameters()])

    global_state = torch.get_rng_state()
    assert torch.equal(run(1), run(1)) and torch.equal(run(1), run(1, split=True))
    assert not torch.equal(run(1), run(2))
    assert torch.equal(torch.get_rng_state(), global_state)  # the global stream is untouched


def test_the_noise_stream_is_its_own():
    from utils.seed import Stream, stream_seed
    others = {stream_seed(2023, stream, epoch) for stream in Stream if stream != Stream.TP_NOISE
              for epoch in range(100)}
    assert stream_seed(2023, Stream.TP_NOISE) not in others


# --- layers and init ------------------------------------------------------------------------------

def test_batch_standardisation_is_per_column_with_the_unbiased_std():
    z = torch.randn(10, 4, dtype=torch.float64) * 3 + 1
    out = batch_standardise(z)
    torch.testing.assert_close(out.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.std(0, correction=1), torch.ones(4, dtype=torch.float64))


def test_fwdtp_bn_normalises_every_layer_and_the_logits():
    config, model, x, _ = _model("FWDTP-BN")
    for a in model(x)[1:]:
        torch.testing.assert_close(a.std(0), torch.ones(a.shape[1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.layers[1].feedback(model(x)[2]).std(0), torch.ones(SIZES[1]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,bound", [("DRL", 0.01), ("FW-DTP", 0.001)])
def test_the_released_init_is_drawn_from_the_seed_layer_by_layer(method, bound):
    """As the FW-DTP code: after torch.manual_seed(seed), per layer W orthogonal then V uniform."""
    config = _config(method, seed=7)
    assert (config.weight_init, config.feedback_init_range) == ("orthogonal", bound)
    from models.mlp import build_simple_linear
    torch.manual_seed(123)  # whatever the global stream holds
    model = build_simple_linear(config, (784,), 10)
    torch.manual_seed(7)
    for layer in model.layers:
        forward = torch.nn.init.orthogonal_(torch.empty(layer.fwd.weight.shape))
        feedback = torch.nn.init.uniform_(torch.empty(layer.bwd.weight.shape), -bound, bound)
        assert torch.equal(layer.fwd.weight, forward) and torch.equal(layer.bwd.weight, feedback)


# --- configs and runs -----------------------------------------------------------------------------

@pytest.mark.parametrize("data", ("mnist", "fmnist", "cifar10", "cifar100"))
@pytest.mark.parametrize("method", METHODS)
def test_every_tp_config_is_the_table_1_mlp_with_plain_sgd(method, data):
    config = _config(method, data)
    assert (config.method, config.architecture, config.act_F, config.batchsize, config.epochs) == \
        (method, "simple_linear", "tanh_bn" if method == "FWDTP-BN" else "tanh", 256, 100)
    assert not any((config.mmt_F, config.mmt_B, config.wd_F, config.warmup, config.tmax, config.GradC,
                    config.grad_clip_F, config.grad_clip_B))
    assert config.tp_feedback_calls == config.tp_pretrain_epochs == 5


def _run_args(data_root, out, method, *extra):
    return ["--yaml", str(REPO / f"yaml/mlp/mnist_{FILES[method]}.yaml"), "--data_root", str(data_root),
            "--epochs", "2", "--batchsize", "32", "--train_batches_per_epoch", "3",
            "--tp_feedback_calls", "2", "--tp_pretrain_epochs", "1", "--device", "cpu",
            "--out_dir", str(out), *extra]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_through_the_entry_script(tiny_mnist, tmp_path, method):
    data_root, _ = tiny_mnist
    out = tmp_path / "run"
    assert run_mlp(*_run_args(data_root, out, method, "--epochs", "1")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["steps"] == 3
    phase = torch.load(out / "checkpoint.pt", weights_only=True)["feedback_phase"]
    assert phase["pretrained"] if method in TRAINED else phase is None


@pytest.mark.parametrize("method", ("DRL", "FWDTP-BN"))
def test_a_stopped_tp_run_resumes_exactly(tiny_mnist, tmp_path, monkeypatch, method):
    """Stopped in its second epoch after the pre-training and some feedback calls: the resumed run
    neither repeats the pre-training nor redraws the noise, and ends bit-identical."""
    data_root, _ = tiny_mnist
    assert run_mlp(*_run_args(data_root, tmp_path / "whole", method)) == 0
    rule, steps = RULES[method], iter(range(1, 100))

    def loss(original, *args, **settings):
        if next(steps) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **settings)

    monkeypatch.setitem(RULES, method, with_loss(method, loss))
    out = tmp_path / "stopped"
    assert run_mlp(*_run_args(data_root, out, method)) == 128 + signal.SIGTERM
    monkeypatch.setitem(RULES, method, rule)
    pretrain = FeedbackPhase.pretrain
    monkeypatch.setattr(FeedbackPhase, "pretrain", lambda *args: pytest.fail("pre-trained twice"))
    assert run_mlp("--resume", str(out)) == 0
    monkeypatch.setattr(FeedbackPhase, "pretrain", pretrain)
    assert outcome(out) == outcome(tmp_path / "whole")
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    stopped = torch.load(out / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(whole["model"][name], value) for name, value in stopped["model"].items())


@pytest.mark.parametrize("changes,message", [
    ({"act_F": "tanh"}, "method FWDTP-BN normalises every layer"),
    ({"compile": 1}, "compile 1 does not support method FWDTP-BN"),
    ({"mmt_F": 0.5}, "set mmt_F: 0"),
])
def test_a_tp_config_that_cannot_train_is_refused(tmp_path, capsys, changes, message):
    flags = [arg for name, value in changes.items() for arg in (f"--{name}", str(value))]
    assert run_mlp("--yaml", str(REPO / "yaml/mlp/mnist_fwdtp_bn.yaml"), *flags,
                   "--out_dir", str(tmp_path / "run")) == 2
    assert message in capsys.readouterr().err


def test_the_cnn_script_refuses_tp(tmp_path, capsys):
    from ccl import experiment
    from ccl.scripts import CNN
    assert experiment.main(CNN, ["--yaml", str(REPO / "yaml/cnn/mnist_bp.yaml"), "--method", "DTP",
                                 "--out_dir", str(tmp_path / "run")]) == 2
    assert "main_class_cnn.py takes method" in capsys.readouterr().err


def test_the_tp_flops_count_one_iteration_of_ours():
    """Every method's backward is the forward products' once (each W_l gets its own gradient
    only); the feedback calls make DRL the dearest, then L-DRL, DTP, and the fixed-weight ones."""
    from ccl.bench.flops import count_tp_flops
    results = {r.method: r for r in count_tp_flops(["mlp_mnist"], "cpu")}
    sizes = [784, 256, 256, 256, 256, 256, 10]
    products = 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) / 1e6  # MFLOPs per sample
    for r in results.values():
        assert r.per_sample(r.backward_flops) == pytest.approx(products, rel=2e-3)
        assert r.as_dict()["paper_mflops_per_sample"] == {"DTP": 48.69, "DRL": 125.73, "L-DRL": 82.45,
                                                          "FWDTP-BN": 18.06}.get(r.method)
    steps = {method: r.step_flops for method, r in results.items()}
    assert steps["DRL"] > steps["L-DRL"] > steps["DTP"] > steps["FWDTP-BN"] >= steps["FW-DTP"]
