"""The MLP's CCL and BP steps reproduce the released code's numbers (tests/fixtures/mlp_mnist_ccl.pt,
mlp_mnist_bp.pt), and so do the pair losses alone (local_losses.pt)."""
import pytest
import torch
import torch.nn.functional as F
from golden import assert_matches_summary, assert_steps_match, golden_model_and_objective, load_fixture

from ccl.config import build_config
from ccl.losses import ae_pair_loss, cnn_pair_loss, flooding_keep_mask, mlp_pair_loss
from ccl.optim import DualOptimizer
from ccl.scripts import mlp_objective as make_task
from models import build_model

CASES = load_fixture("local_losses.pt")


def _keep(case):
    if not case["filter_target"]:
        return None
    return flooding_keep_mask(case["predictions"], case["target"])


def _onehot(case):
    return F.one_hot(case["target"], case["B"].shape[0]).float()


def _case_id(case):
    shape = "x".join(map(str, case["A"].shape))
    return f"{case['kind']}-{shape}-filter{case.get('filter_target', '')}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_local_loss_matches_released_code(case):
    kind = case["kind"]
    if kind == "mlp":
        loss = mlp_pair_loss(case["A"], case["B"], _onehot(case), _keep(case),
                                  loss_scale_C=case["loss_scale_C"])
    elif kind == "cnn":
        loss = cnn_pair_loss(case["A"], case["B"], _onehot(case), _keep(case),
                                  loss_scale_C=case["loss_scale_C"], loss_scale_ssl=case["loss_scale_ssl"])
    else:
        loss_scale_D = case["loss_scale_D"] if kind == "ae" else None
        loss = ae_pair_loss(case["A"], case["B"], case["loss_scale_C"], loss_scale_D)
    assert loss.item() == pytest.approx(case["loss"], rel=1e-5)


def test_flooding_masks_confident_samples_only():
    logits = torch.tensor([[10.0, -10.0], [0.0, 0.0], [-10.0, 10.0]])
    labels = torch.tensor([0, 0, 0])
    assert flooding_keep_mask(logits, labels).tolist() == [0.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def golden():
    return load_fixture("mlp_mnist_ccl.pt")


def _model_and_task(golden):
    return golden_model_and_objective(golden, make_task)


def test_initial_parameters_follow_the_recipe(golden):
    _, model, _ = _model_and_task(golden)
    for name, param in model.named_parameters():
        assert_matches_summary(param, golden["params_before"][name], name)


def test_three_ccl_steps_match_released_code(golden):
    assert_steps_match(golden, *_model_and_task(golden))


def test_three_bp_steps_match_released_code():
    """Backprop through the MLP: lr 1, no momentum, clipping at 1, on the CCL case's batch."""
    bp = load_fixture("mlp_mnist_bp.pt", batch_from="mlp_mnist_ccl.pt")
    assert bp["config"]["method"] == "BP"
    assert_steps_match(bp, *_model_and_task(bp))


def _optimizer(warmup, counter):
    config = build_config(load_fixture("mlp_mnist_ccl.pt")["config"],
                          {"warmup": warmup, "warmup_counter": counter}, {}, "golden config")
    model = build_model(config, input_shape=(784,), num_classes=10)
    return DualOptimizer(model, config)


def test_warmup_counts_global_steps_by_default():
    optimizer = _optimizer(4, "step")
    optimizer.steps_taken = 3
    assert optimizer.warmup_factor(batch_in_epoch=0) == 1.0
    optimizer.steps_taken = 4
    assert optimizer.warmup_factor(batch_in_epoch=0) == 1.0
    optimizer.steps_taken = 2
    assert optimizer.warmup_factor(batch_in_epoch=0) == 0.75


def test_released_warmup_restarts_every_epoch():
    optimizer = _optimizer(4, "batch_in_epoch")
    optimizer.steps_taken = 3  # second epoch of 3 batches: the released factor falls back
    assert optimizer.warmup_factor(batch_in_epoch=0) == 0.25
    optimizer.steps_taken = 4
    assert optimizer.warmup_factor(batch_in_epoch=1) == 1.0
