"""Train the paper's STL-10 convolutional autoencoder with backprop or counter-current learning.

    python main_ae.py --yaml yaml/cnn_ae/stl10_ccl_legacy.yaml [--KEY VALUE ...]

Besides the usual run directory, writes `reconstructions.png`: 10 fixed test images and the best
model's reconstructions of them.
"""
import sys

from ccl.experiment import Script, main
from ccl.tasks import Reconstruction
from utils.data.recipes import ae_data
from utils.data.task_transforms import TASK_TRANSFORMS
from utils.errors import ConfigError
from utils.figures import save_reconstructions


def make_task(config, num_classes: int) -> Reconstruction:
    return Reconstruction(config.loss_scale_C, config.loss_scale_D)


def check(config) -> None:
    if config.task_transform not in TASK_TRANSFORMS:
        raise ConfigError(f"{SCRIPT.prog} takes task_transform {', '.join(TASK_TRANSFORMS)}; "
                          f"got {config.task_transform!r}")
    if config.bias_init != "zero":
        raise ConfigError(f"{SCRIPT.prog} initialises biases as released whatever bias_init says "
                          f"(forward biases zero, feedback biases PyTorch's default): set "
                          f"bias_init: zero (got {config.bias_init!r})")


SCRIPT = Script(
    prog="main_ae.py",
    description="Train the STL-10 convolutional autoencoder with BP or CCL.",
    task="autoencoder",
    architectures=("cnn_pool_autoencoder", "cnn_stride_autoencoder"),
    datasets=("STL10",),
    make_data=ae_data,
    make_task=make_task,
    methods=("BP", "CCL"),  # the baselines' fixed matrices project class errors or targets
    defaults={"task_transform": "same"},
    check=check,
    report=save_reconstructions,
    # no decorrelation terms, no flooding; fused_pair_loss is the classification CNN's
    ignored=("loss_scale_ssl", "filter_target", "fused_pair_loss"),
)

if __name__ == "__main__":
    sys.exit(main(SCRIPT))
