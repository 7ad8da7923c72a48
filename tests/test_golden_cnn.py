"""The CNN steps reproduce the released code's numbers: three CCL steps of `cnn_pool`
(tests/fixtures/cnn_cifar10_ccl.pt) on CIFAR-10-shaped input with warm-up, momentum, weight decay,
gradient centralisation, clipping and flooding, as main_class_cnn.py builds them, and three BP
steps of the strided `cnn` (cnn_cifar10_bp.pt)."""
import pytest
import torch
from golden import assert_matches_summary, assert_steps_match, golden_model_and_objective, load_fixture

from ccl.config import build_config
from ccl.scripts import cnn_objective as make_task
from models import build_model


@pytest.fixture(scope="module")
def golden():
    return load_fixture("cnn_cifar10_ccl.pt")


def test_the_case_exercises_every_part_of_the_step(golden):
    config = golden["config"]
    assert config["architecture"] == "cnn_pool" and config["warmup"] > len(golden["steps"])
    assert config["mmt_F"] and config["wd_F"] and config["GradC"] and config["grad_clip_F"]
    assert config["filter_target"]


def test_initial_parameters_follow_the_recipe(golden):
    _, model, _ = golden_model_and_objective(golden, make_task)
    assert set(dict(model.named_parameters())) == set(golden["init"]), "cnn_pool has no biases"
    for name, param in model.named_parameters():
        assert_matches_summary(param, golden["params_before"][name], name)


def test_three_ccl_steps_match_released_code(golden):
    assert_steps_match(golden, *golden_model_and_objective(golden, make_task))


def test_three_bp_steps_of_the_strided_cnn_match_released_code():
    """Backprop through `cnn` with a non-affine BN on the input of every conv layer (its
    running statistics included), warm-up, momentum, weight decay and gradient centralisation."""
    bp = load_fixture("cnn_cifar10_bp.pt", batch_from="cnn_cifar10_ccl.pt")
    config = bp["config"]
    assert (config["method"], config["architecture"], config["fw_bn"], config["GradC"]) == ("BP", "cnn", 1, 1)
    assert_steps_match(bp, *golden_model_and_objective(bp, make_task))


def _cnn(golden, **changes):
    config = build_config(golden["config"], changes, {}, "test")
    return build_model(config, (config.num_chn, 32, 32), 10)


def test_strided_cnn_shapes_and_zeroed_biases(golden):
    """`cnn`: stride-2 convs with biases (zero when bias_init is 'zero'), same activation and
    signal shapes as `cnn_pool`."""
    model = _cnn(golden, architecture="cnn")
    convs = [model.get_submodule(f"layer{k}") for k in range(1, 6)]
    assert all(layer.fwd.stride == (2, 2) and layer.bwd.stride == (1, 1) for layer in convs)
    assert all(not layer.fwd.bias.any() and not layer.bwd.bias.any() for layer in convs)
    shapes = [tuple(a.shape) for a in model(golden["x"])]
    assert shapes == [tuple(s) for s in golden["steps"][0]["act_shapes"]]
    signals = [tuple(b.shape) for b in model.feedback(torch.eye(10))]
    assert signals == [tuple(s) for s in golden["steps"][0]["sig_shapes"]]


def test_pytorch_default_biases_when_bias_init_is_none(golden):
    model = _cnn(golden, architecture="cnn", bias_init="none")
    assert model.layer1.fwd.bias.abs().sum() > 0


@pytest.mark.parametrize("fw_bn, bw_bn", [(1, 0), (2, 2)])
def test_batchnorm_positions_skip_the_output_maps(golden, fw_bn, bw_bn):
    """The BN variants of the released BP configs: BN on every map but the logits and b_0."""
    model = _cnn(golden, architecture="cnn", fw_bn=fw_bn, bw_bn=bw_bn, bn_affine=0)
    assert all(model.get_submodule(f"layer{k}").fwd_bn is not None for k in range(1, 6))
    assert model.layer6.fwd_bn is None and model.layer1.bwd_bn is None
    assert (model.layer2.bwd_bn is not None) == bool(bw_bn)
    assert model.layer1.fwd_bn.num_features == (3 if fw_bn == 1 else 128)
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
                 for p in m.parameters()}
    trained = {id(p) for p in model.forward_parameters() + model.feedback_parameters()}
    assert not bn_params & trained, "BN parameters are in no optimizer, as released"


def test_one_input_channel_and_a_hundred_classes(golden):
    model = build_model(build_config(golden["config"], {"num_chn": 1}, {}, "test"), (1, 32, 32), 100)
    assert model(torch.randn(2, 1, 32, 32))[-1].shape == (2, 100)
    assert model.feedback(torch.eye(100))[0].shape == (100, 1, 32, 32)


def test_other_input_sizes_are_refused(golden):
    config = build_config(golden["config"], {}, {}, "test")
    with pytest.raises(ValueError, match="32, 32"):
        build_model(config, (3, 28, 28), 10)
