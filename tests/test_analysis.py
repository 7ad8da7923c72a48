"""The analysis measures (ccl/measures.py): linear CKA, the forward/feedback CKA matrix, weight
cosines, gradient angles against backprop, and that measuring leaves a run untouched."""
import json
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from ccl.losses import mlp_pair_loss
from ccl.measures import (
    analyse,
    angle_deg,
    cka_matrix,
    feedback_weight_as_forward,
    gradient_angles,
    linear_cka,
    weight_cosines,
)
from ccl.objectives import Classification, Reconstruction
from ccl.rules import bp_loss, ccl_loss
from models import LayerOptions, mlp
from models.cnn import cnn
from models.conv import DualConv, DualUpConv
from models.network import DualNetwork

SIZES = [12, 10, 8, 4]
CLASSES = SIZES[-1]


def _classification(flood_threshold=None):
    return Classification(CLASSES, partial(mlp_pair_loss, loss_scale_C=1.0), flood_threshold)


def _mlp_probe(seed=0, options=LayerOptions(), samples=16):
    torch.manual_seed(seed)
    model = mlp(SIZES, options)
    return model, torch.randn(samples, SIZES[0]), torch.randint(0, CLASSES, (samples,))


def _random_orthogonal(size, seed):
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q


# --- linear CKA ----------------------------------------------------------------------------
@pytest.mark.parametrize("samples, features", [(40, 6), (6, 40)])  # feature form, Gram form
def test_cka_of_a_representation_with_itself_is_one(samples, features):
    x = torch.randn(samples, features)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("samples, features", [(40, 6), (6, 40)])
def test_cka_is_symmetric(samples, features):
    x, y = torch.randn(samples, features), torch.randn(samples, features + 3)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


@pytest.mark.parametrize("samples, features", [(40, 6), (6, 40)])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(samples, features):
    x, y = torch.randn(samples, features, dtype=torch.float64), torch.randn(samples, 5, dtype=torch.float64)
    reference = linear_cka(x, y)
    assert linear_cka(x @ _random_orthogonal(features, 1), y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x, y @ _random_orthogonal(5, 2)) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(7.5 * x, y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x, 0.01 * y) == pytest.approx(reference, abs=1e-12)
    assert linear_cka(x, y) != pytest.approx(linear_cka(x, y * torch.arange(1.0, 6.0)), abs=1e-3), \
        "an anisotropic scaling changes CKA: the invariances above are not vacuous"


def test_cka_of_independent_representations_is_near_zero():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(5000, 4, generator=generator), torch.randn(5000, 6, generator=generator)
    assert 0 <= linear_cka(x, y) < 0.01


@pytest.mark.parametrize("zero_columns", [0, 10])  # 0: the feature form; 10: the Gram form
def test_cka_of_a_small_case_by_hand(zero_columns):
    """X = (1, 2, 3)^T and Y = the first two rows of I_2 above a zero row. Centred,
    X_c = (-1, 0, 1)^T and Y_c^T X_c = (-1, 0), so the numerator is 1; ||X_c^T X_c|| = 2 and
    Y_c^T Y_c = [[2/3, -1/3], [-1/3, 2/3]] has norm sqrt(10)/3: CKA = 3 / (2 sqrt(10)).
    Zero columns change no product, but make the Gram form the cheaper one."""
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    x = torch.cat([x, torch.zeros(3, zero_columns)], dim=1)
    assert linear_cka(x, y) == pytest.approx(3 / (2 * math.sqrt(10)), abs=1e-12)


def test_cka_of_a_constant_representation_is_nan():
    assert math.isnan(linear_cka(torch.ones(5, 3), torch.randn(5, 2)))


def test_cka_needs_the_same_samples_on_both_sides():
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(torch.randn(5, 3), torch.randn(4, 3))


# --- the CKA matrix ------------------------------------------------------------------------
def test_cka_matrix_pairs_forward_outputs_with_feedback_outputs_of_each_samples_label():
    model, x, y = _mlp_probe()
    matrix = cka_matrix(model, _classification(), x, y)
    with torch.no_grad():
        activations = model(x)
        signals = model.feedback(F.one_hot(y, CLASSES).float())
    entries = len(SIZES)  # a_0 = x .. a_L and b_0 .. b_L = the one-hot labels
    expected = [[linear_cka(activations[i], signals[j]) for j in range(entries)] for i in range(entries)]
    assert torch.tensor(matrix).shape == (entries, entries)
    assert matrix[0][0] == pytest.approx(linear_cka(x, signals[0]), abs=1e-12), "top left: input, b_0"
    assert matrix[-1][-1] == pytest.approx(linear_cka(activations[-1], F.one_hot(y, CLASSES)), abs=1e-12)
    torch.testing.assert_close(torch.tensor(matrix, dtype=torch.float64),
                               torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


def test_cka_matrix_of_the_cnn_flattens_every_map():
    torch.manual_seed(0)
    model = cnn(1, 3, LayerOptions(), pooled=True)
    x, y = torch.randn(6, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2])
    task = Classification(3, partial(mlp_pair_loss, loss_scale_C=1.0), None)
    matrix = torch.tensor(cka_matrix(model, task, x, y))
    assert matrix.shape == (7, 7)  # the input, five conv outputs and the logits; b_0..b_5, the labels
    assert torch.isfinite(matrix).all() and (matrix >= -1e-9).all() and (matrix <= 1 + 1e-9).all()


# --- weight cosines ------------------------------------------------------------------------
def test_weight_cosine_is_one_for_transposed_feedback_weights():
    model, _, _ = _mlp_probe()
    assert all(abs(c) < 0.5 for c in weight_cosines(model)), "random weights are far from aligned"
    with torch.no_grad():
        for layer in model.layers:
            layer.bwd.weight.copy_(layer.fwd.weight.T * 3.0)
    assert weight_cosines(model) == pytest.approx([1.0] * (len(SIZES) - 1), abs=1e-12)


def test_weight_cosine_is_one_for_transposed_and_flipped_conv_kernels():
    torch.manual_seed(0)
    options = LayerOptions()
    model = DualNetwork([DualConv(3, 4, options, pool=False, bias=True, is_bottom=True),
                         DualUpConv(4, 3, options, is_top=True)])
    with torch.no_grad():
        for layer in model.layers:
            layer.bwd.weight.copy_(layer.fwd.weight.transpose(0, 1).flip(2, 3))
    assert weight_cosines(model) == pytest.approx([1.0, 1.0], abs=1e-12)
    with torch.no_grad():
        for layer in model.layers:
            layer.bwd.weight.copy_(layer.fwd.weight.transpose(0, 1))  # not flipped
    assert all(c < 0.99 for c in weight_cosines(model))


def test_flipped_transposed_kernel_is_the_adjoint_of_a_stride_one_conv():
    """<conv(x, W), y> = <x, conv(y, W.transpose(0, 1).flip(2, 3))>, and that conv is the
    transposed conv of W: the map backprop sends errors through."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 3, 3, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(2, 3, 7, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(2, 5, 7, 6, generator=generator, dtype=torch.float64)
    adjoint_kernel = feedback_weight_as_forward(weight)
    forward_then_y = (F.conv2d(x, weight, padding=1) * y).sum()
    x_then_adjoint = (x * F.conv2d(y, adjoint_kernel, padding=1)).sum()
    torch.testing.assert_close(forward_then_y, x_then_adjoint, rtol=1e-12, atol=0)
    torch.testing.assert_close(F.conv2d(y, adjoint_kernel, padding=1),
                               F.conv_transpose2d(y, weight, padding=1), rtol=1e-12, atol=1e-12)
    unflipped = (x * F.conv2d(y, weight.transpose(0, 1), padding=1)).sum()
    assert not torch.isclose(forward_then_y, unflipped, rtol=1e-3)


# --- gradient angles -----------------------------------------------------------------------
def test_angle_deg_of_known_vectors():
    assert angle_deg(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(45.0)
    assert angle_deg(torch.tensor([1.0, 2.0]), torch.tensor([-2.0, -4.0])) == pytest.approx(180.0)
    assert math.isnan(angle_deg(torch.zeros(3), torch.ones(3)))


def test_backprop_rule_has_angle_zero_at_every_layer():
    model, x, y = _mlp_probe()
    assert gradient_angles(model, _classification(), bp_loss, x, y) == [0.0] * (len(SIZES) - 1)


def _explicit_ccl_gradient(model, task, x, y, layer):
    """The gradient of forward map `layer` from its own pair loss (hidden layers) or from the
    cross-entropy (the top layer), written out by hand."""
    weight = model.layers[layer - 1].fwd.weight
    activations = model(x, detach=True)
    if layer == len(model.layers):
        loss = F.cross_entropy(activations[-1], y)
    else:
        signals = model.feedback(task.feedback_input(y), detach=True)
        loss = mlp_pair_loss(activations[layer], signals[layer], F.one_hot(y, CLASSES).float(),
                                  loss_scale_C=1.0)
    return torch.autograd.grad(loss, weight)[0]


def _acos_angle(u, v):
    u, v = u.flatten().double(), v.flatten().double()
    cosine = float(u @ v / (u.norm() * v.norm()))
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def test_ccl_angles_equal_the_angles_between_explicit_local_and_backprop_gradients():
    model, x, y = _mlp_probe()
    task = _classification()
    angles = gradient_angles(model, task, ccl_loss, x, y)
    for layer in range(1, len(SIZES)):
        local = _explicit_ccl_gradient(model, task, x, y, layer)
        backprop = torch.autograd.grad(F.cross_entropy(model.predict(x), y),
                                       model.layers[layer - 1].fwd.weight)[0]
        assert angles[layer - 1] == pytest.approx(_acos_angle(local, backprop), abs=1e-4)
    assert all(angle > 1.0 for angle in angles[:-1]), "hidden layers: CCL's gradient is not backprop's"


def test_top_layer_angle_is_zero_under_ccl():
    """The top forward map's only loss is the cross-entropy on the logits, which it computes
    from the same a_{L-1} under both rules (detached or not)."""
    model, x, y = _mlp_probe(seed=3)
    assert gradient_angles(model, _classification(), ccl_loss, x, y)[-1] == pytest.approx(0.0, abs=1e-6)


def test_fully_flooded_hidden_layers_have_no_angle():
    """A threshold above 1 floods every sample: the pair losses give the hidden forward maps a
    zero gradient, whose angle is undefined (null in the record)."""
    model, x, y = _mlp_probe()
    record = analyse(model, _classification(flood_threshold=1.5), ccl_loss, x, y)
    assert record["grad_angle_deg"][:-1] == [None] * (len(SIZES) - 2)
    assert record["grad_angle_deg"][-1] == pytest.approx(0.0, abs=1e-6)


# --- the record ----------------------------------------------------------------------------
def test_record_of_an_mlp_is_plain_json():
    model, x, y = _mlp_probe()
    record = analyse(model, _classification(), ccl_loss, x, y)
    layers = len(SIZES) - 1
    assert record["layers"] == [f"layer{index}" for index in range(1, layers + 1)]
    assert len(record["cka"]) == layers + 1 and all(len(row) == layers + 1 for row in record["cka"])
    assert len(record["weight_cosine"]) == len(record["grad_angle_deg"]) == layers
    assert json.loads(json.dumps(record, allow_nan=False)) == record
    values = [v for row in record["cka"] for v in row] + record["weight_cosine"] + record["grad_angle_deg"]
    assert all(type(v) is float for v in values)


def _tiny_autoencoder():
    torch.manual_seed(0)
    options = LayerOptions(act_F="relu", act_B="relu", fw_bn=2, bw_bn=2)
    model = DualNetwork([DualConv(3, 4, options, pool=False, bias=True, is_bottom=True),
                         DualUpConv(4, 3, options, is_top=True)])
    return model, torch.rand(6, 3, 8, 8)


def test_record_of_an_autoencoder_feeds_the_target_image_back():
    model, images = _tiny_autoencoder()
    task = Reconstruction(loss_scale_C=1.0, loss_scale_D=1.0)
    record = analyse(model, task, ccl_loss, images, images)
    with torch.no_grad():
        model.eval()
        b0 = model.feedback(images)[0]
        a1 = model(images)[1]
        model.train()
    assert record["cka"][1][0] == pytest.approx(linear_cka(a1, b0), abs=1e-12)
    assert record["cka"][0][-1] == pytest.approx(1.0, abs=1e-12), "the input is the target"
    assert record["grad_angle_deg"][-1] == pytest.approx(0.0, abs=1e-4), \
        "the top pair loss is the reconstruction's MSE, scaled"
    with torch.no_grad():
        model.layer2.fwd.weight.zero_()  # the autoencoder's reconstruction map starts at zero
    record = analyse(model, task, ccl_loss, images, images)
    assert record["weight_cosine"][1] is None
    assert all(v is None for v in record["cka"][2]), "a constant reconstruction has no CKA"
    json.dumps(record, allow_nan=False)


# --- measuring leaves the run untouched ----------------------------------------------------
def _snapshot(model):
    return {"state": {k: v.clone() for k, v in model.state_dict().items()},
            "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
            "modes": [m.training for m in model.modules()],
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _assert_same(before, after):
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for key, grad in before["grads"].items():
        assert (grad is None and after["grads"][key] is None) or torch.equal(grad, after["grads"][key]), key
    assert before["modes"] == after["modes"]
    assert torch.equal(before["cpu_rng"], after["cpu_rng"])
    assert all(torch.equal(a, b) for a, b in zip(before["cuda_rng"], after["cuda_rng"]))


def test_analysis_leaves_parameters_grads_buffers_modes_and_rng_as_they_were():
    model, x, y = _mlp_probe(options=LayerOptions(fw_bn=2, bw_bn=1))
    task = _classification()
    model.train()
    ccl_loss(model, task, x, y).backward()  # .grad fields and BN statistics that are not initial
    model.layer2.eval()                     # a mixed mode, to be kept as it is
    before = _snapshot(model)
    analyse(model, task, ccl_loss, x, y)
    _assert_same(before, _snapshot(model))
    ccl_loss(model, task, x, y)
    assert not torch.equal(before["state"]["layer1.fwd_bn.running_mean"],
                           model.state_dict()["layer1.fwd_bn.running_mean"]), \
        "a train-mode pass moves the BN statistics: the check above is not vacuous"


def test_analysis_restores_the_random_state_that_a_stochastic_rule_draws_from():
    def noisy_backprop(model, task, inputs, targets):  # a rule may draw random numbers
        return bp_loss(model, task, inputs + 0.1 * torch.randn_like(inputs), targets)

    model, x, y = _mlp_probe()
    before = _snapshot(model)
    analyse(model, _classification(), noisy_backprop, x, y)
    _assert_same(before, _snapshot(model))


def test_training_is_bit_identical_with_the_analysis_on_or_off():
    def train(with_analysis):
        model, x, y = _mlp_probe(options=LayerOptions(fw_bn=2, bw_bn=2))
        task = _classification(flood_threshold=0.1)
        sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(3):
            batch = slice(4 * step, 4 * step + 8)
            ccl_loss(model, task, x[batch], y[batch]).backward()
            if with_analysis:
                analyse(model, task, ccl_loss, x, y)
            sgd.step()
            sgd.zero_grad()
        return model.state_dict()

    plain, analysed = train(False), train(True)
    assert all(torch.equal(plain[key], analysed[key]) for key in plain)
