"""The lean training step computes exactly what the plain one does.

`released_step` below transcribes the released step without any of the speed-ups: the MLP
loss scaled in three operations, `F.one_hot`, the loss always multiplied by its warm-up
factor, one centralisation per gradient. Three steps of it and of the project's step, from the
same weights on the same batches, must leave every parameter identical to the bit (CPU, one
thread); the golden tests compare both with the released code's numbers.
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from torch.nn.utils import clip_grad_norm_

from ccl.config import build_config, read_yaml_sections
from ccl.losses import flooding_keep_mask
from ccl.optim import DualOptimizer
from ccl.rules import ccl_loss
from ccl.scripts import CNN, MLP
from models import build_model

STEPS = 3


def released_mlp_alignment(a, b, onehot, keep, loss_scale_C):
    A = a.flatten(1) if keep is None else a.flatten(1) * keep[:, None]
    return F.mse_loss(A @ b.flatten(1).T, onehot) / A.shape[1] * loss_scale_C * 256


def released_loss(model, task, config, x, y):
    activations = model(x, detach=True)
    signals = model.feedback(torch.eye(task.num_classes), detach=True)
    logits = activations[-1]
    keep = flooding_keep_mask(logits, y, config.flood_threshold) if config.filter_target else None
    onehot = F.one_hot(y, task.num_classes).float()
    loss = F.cross_entropy(logits, y)
    for a, b in zip(activations[:-1], signals[:-1]):
        if config.architecture == "simple_linear":
            loss = loss + released_mlp_alignment(a, b, onehot, keep, config.loss_scale_C)
        else:
            loss = loss + task.pair_loss(a, b, onehot, keep)
    return loss


def released_step(model, task, config, sgds, step, x, y):
    factor = min(1.0, (step + 1) / config.warmup) if config.warmup else 1.0
    (released_loss(model, task, config, x, y) * factor).backward()
    forward, feedback = model.forward_parameters(), model.feedback_parameters()
    if config.GradC:
        for p in forward + feedback:
            if p.grad is not None and p.grad.dim() > 1:
                p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
    clip_grad_norm_(forward, config.grad_clip_F)
    clip_grad_norm_(feedback, config.grad_clip_B)
    for sgd in sgds:
        sgd.step()
        sgd.zero_grad(set_to_none=True)


def models_and_data(config, input_shape, batch=4):
    torch.manual_seed(0)
    ours = build_model(config, input_shape, 10)
    plain = build_model(config, input_shape, 10)
    plain.load_state_dict(ours.state_dict())
    batches = [(torch.randn(batch, *input_shape), torch.randint(0, 10, (batch,))) for _ in range(STEPS)]
    return ours, plain, batches


CASES = {
    # the released config (loss_scale_C 0.5: its factor is exact), then one with a scale whose
    # factor rounds, warm-up, momentum, weight decay and centralisation
    "mlp": ("yaml/mlp/mnist_ccl.yaml", MLP, (784,), {}),
    "mlp-rounding": ("yaml/mlp/mnist_ccl.yaml", MLP, (784,),
                     {"loss_scale_C": 0.3, "warmup": 2, "GradC": 1, "mmt_F": 0.5, "mmt_B": 0.5,
                      "wd_F": 1e-4, "wd_B": 1e-4, "filter_target": 1}),
    "cnn_pool": ("yaml/cnn/cifar10_ccl.yaml", CNN, (3, 32, 32), {"warmup": 2}),
}


@pytest.mark.parametrize("case", CASES)
def test_the_step_leaves_the_parameters_of_the_plain_step(case):
    path, script, input_shape, overrides = CASES[case]
    config = build_config(read_yaml_sections(REPO / path), overrides, {"task": "classification"}, path)
    task = script.make_objective(config, 10)
    ours, plain, batches = models_and_data(config, input_shape)
    optimizer = DualOptimizer(ours, config)
    sgds = [torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
            for params, lr, momentum, decay in
            ((plain.forward_parameters(), config.lr_F, config.mmt_F, config.wd_F),
             (plain.feedback_parameters(), config.lr_B, config.mmt_B, config.wd_B))]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step, (x, y) in enumerate(batches):
            loss = ccl_loss(ours, task, x, y)
            assert loss.item() == pytest.approx(released_loss(plain, task, config, x, y).item(), rel=1e-6)
            optimizer.warmup_scaled(loss).backward()
            optimizer.step()
            released_step(plain, task, config, sgds, step, x, y)
    finally:
        torch.set_num_threads(threads)
    for (name, p), q in zip(ours.named_parameters(), plain.parameters()):
        assert torch.equal(p, q), f"{case}: {name} differs after {STEPS} steps"
