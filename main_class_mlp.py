"""Train the paper's MLPs (Table 1) with backprop or counter-current learning.

    python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml [--KEY VALUE ...]
"""
import sys
from functools import partial

from ccl.experiment import Script, main
from ccl.losses import mlp_alignment_loss
from ccl.tasks import Classification, flood_threshold
from utils.data.recipes import mlp_data
from utils.errors import ConfigError


def make_task(config, num_classes: int) -> Classification:
    return Classification(num_classes, partial(mlp_alignment_loss, loss_scale_C=config.loss_scale_C),
                          flood_threshold(config))


def no_schedules(config) -> None:
    if config.warmup or config.tmax:
        raise ConfigError(f"{SCRIPT.prog} trains without warm-up or cosine schedule (as released): "
                          f"set warmup: 0 and tmax: 0 (got warmup {config.warmup}, tmax {config.tmax})")


SCRIPT = Script(
    prog="main_class_mlp.py",
    description="Train an MLP on MNIST, FashionMNIST, CIFAR-10 or CIFAR-100 with BP or CCL.",
    task="classification",
    architectures=("simple_linear",),
    datasets=("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"),
    make_data=mlp_data,
    make_task=make_task,
    defaults={"task_transform": "none"},
    check=no_schedules,
    # no decorrelation or normalised terms, no augmentation, a pair loss with nothing to fuse
    ignored=("loss_scale_ssl", "loss_scale_D", "augment_validation", "fused_pair_loss"),
)

if __name__ == "__main__":
    sys.exit(main(SCRIPT))
