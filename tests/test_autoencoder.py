"""The STL-10 dual autoencoder (docs/ALGORITHM.md section 6): layers, BN placement, initialisation, shapes at
96x96, and its pair losses against the released code's numbers."""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from golden import load_fixture
from torch import nn

from ccl.config import build_config, read_yaml_sections
from ccl.objectives import Reconstruction, in_order_sum
from ccl.optim import DualOptimizer
from models import ARCHITECTURES, build_model
from models.autoencoder import build_conv_autoencoder, orthogonal
from models.conv import DualConv, DualUpConv

CHANNELS = [3, 128, 256, 1024, 2048, 1024, 256, 128, 3]
SIZES = [96, 48, 24, 12, 6, 12, 24, 48, 96]
ENCODER, DECODER = range(0, 4), range(4, 8)


@pytest.fixture(scope="module")
def config():
    values = read_yaml_sections(REPO / "yaml/cnn_ae/stl10_ccl_legacy.yaml")
    return build_config(values, {}, {"task": "autoencoder"}, "stl10_ccl_legacy.yaml")


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return build_model(config, (3, 96, 96), 10)


def test_both_released_architecture_names_build_the_autoencoder():
    assert ARCHITECTURES["cnn_pool_autoencoder"] is ARCHITECTURES["cnn_stride_autoencoder"]
    assert ARCHITECTURES["cnn_pool_autoencoder"] is build_conv_autoencoder


def test_images_must_halve_four_times(config):
    with pytest.raises(ValueError, match="multiples of 16"):
        build_conv_autoencoder(config, (3, 90, 96), 10)


@pytest.mark.slow
def test_layers_strides_bn_and_activations(model):
    layers = model.layers
    assert [type(layer) for layer in layers] == [DualConv] * 4 + [DualUpConv] * 4
    for index, layer in enumerate(layers):
        n_in, n_out = CHANNELS[index], CHANNELS[index + 1]
        assert (layer.fwd.in_channels, layer.fwd.out_channels) == (n_in, n_out)
        assert (layer.bwd.in_channels, layer.bwd.out_channels) == (n_out, n_in)
        encoder = index in ENCODER
        assert layer.fwd.stride == ((2, 2) if encoder else (1, 1))
        assert layer.bwd.stride == ((1, 1) if encoder else (2, 2))
        assert layer.fwd.bias is not None and layer.bwd.bias is not None
        top, bottom = index == 7, index == 0
        # BN after the map, before the activation; the two output maps have neither.
        assert (layer.fwd_bn is None) == top and (layer.bwd_bn is None) == bottom
        if not top:
            assert layer.fw_bn_position == 2 and layer.fwd_bn.num_features == n_out
            assert layer.fwd_bn.affine and layer.fwd_act is F.relu
        if not bottom:
            assert layer.bw_bn_position == 2 and layer.bwd_bn.num_features == n_in
            assert layer.bwd_bn.affine and layer.bwd_act is F.relu
    assert layers[7].fwd_act(torch.tensor(-1.0)) == -1 and layers[0].bwd_act(torch.tensor(-1.0)) == -1


def _orthogonal_layout(weight):
    """The (rows, cols) matrix the init orthogonalises: (out, in*k*k), or (in, out*k*k) when
    the layer has fewer output than input channels."""
    return weight.flatten(1) if weight.shape[0] >= weight.shape[1] else weight.transpose(0, 1).flatten(1)


def _expected_scale(index, side):
    if (index, side) in ((7, "fwd"), (0, "bwd")):
        return 0.0
    decoder_forward = index in DECODER and side == "fwd"
    encoder_feedback = index in ENCODER and side == "bwd"
    return 0.001 if decoder_forward or encoder_feedback else 1.0


@pytest.mark.parametrize("index", range(8))
@pytest.mark.parametrize("side", ["fwd", "bwd"])
def test_weights_are_orthogonal_and_scaled(model, index, side):
    weight = getattr(model.layers[index], side).weight.detach()
    scale = _expected_scale(index, side)
    if scale == 0:
        assert torch.count_nonzero(weight) == 0, "starts at exactly zero"
        return
    matrix = _orthogonal_layout(weight)
    # The smaller side is orthonormal (times the scale); 64 of its vectors are checked.
    vectors = matrix[:64] if matrix.shape[0] <= matrix.shape[1] else matrix[:, :64].T
    gram = vectors @ vectors.T / scale**2
    torch.testing.assert_close(gram, torch.eye(len(vectors)), atol=2e-5, rtol=0)


def test_forward_biases_zero_feedback_biases_default(model):
    for layer in model.layers:
        assert torch.count_nonzero(layer.fwd.bias) == 0
        bound = 1 / math.sqrt(layer.bwd.in_channels * 9)  # PyTorch's default init
        assert 0 < layer.bwd.bias.abs().max() <= bound


def test_orthogonal_is_torchs_orthogonal_init():
    for shape in [(128, 27), (27, 128), (256, 128, 3, 3), (64, 576)]:
        torch.manual_seed(5)
        expected = nn.init.orthogonal_(torch.empty(shape))
        torch.manual_seed(5)
        torch.testing.assert_close(orthogonal(shape), expected, atol=2e-6, rtol=0)


def test_bn_affine_parameters_are_in_no_optimizer(model, config):
    optimizer = DualOptimizer(model, config)
    trained = [p for sgd in (optimizer.forward_sgd, optimizer.feedback_sgd)
               for group in sgd.param_groups for p in group["params"]]
    assert len(trained) == len({id(p) for p in trained}) == 32  # weight and bias of 16 convs
    bn = [p for name, p in model.named_parameters() if "_bn." in name]
    assert len(bn) == 2 * 14  # 16 maps, the two output maps without BN
    assert not {id(p) for p in bn} & {id(p) for p in trained}


@pytest.mark.slow
@torch.no_grad()
def test_activation_and_signal_shapes_at_96x96(model):
    model.eval()
    x = torch.rand(2, 3, 96, 96)
    activations, signals = model(x, detach=True), model.feedback(x, detach=True)
    expected = [(2, c, s, s) for c, s in zip(CHANNELS, SIZES)]
    assert [tuple(a.shape) for a in activations] == expected
    assert [tuple(b.shape) for b in signals] == expected
    assert signals[-1] is x
    # Zero weights and biases: the reconstruction starts at 0; b_0 is the feedback bias alone.
    assert torch.count_nonzero(activations[-1]) == 0
    bias = model.layers[0].bwd.bias
    torch.testing.assert_close(signals[0], bias.view(1, 3, 1, 1).expand(2, 3, 96, 96))


def test_pair_losses_match_released_code():
    """End pairs (x vs b_0, reconstruction vs target) take the raw term, hidden pairs both."""
    cases = {case["kind"]: case for case in load_fixture("local_losses.pt") if case["kind"].startswith("ae")}
    hidden, end = cases["ae"], cases["ae_end"]
    assert hidden["loss_scale_C"] == end["loss_scale_C"] and hidden["loss_scale_D"] == end["loss_scale_D"]
    task = Reconstruction(hidden["loss_scale_C"], hidden["loss_scale_D"])
    loss = in_order_sum(task.loss_terms([end["A"], hidden["A"], hidden["A"], end["A"]],
                                        [end["B"], hidden["B"], hidden["B"], end["B"]], targets=None))
    assert loss.item() == pytest.approx(2 * end["loss"] + 2 * hidden["loss"], rel=1e-5)
