"""Train the paper's CNNs (Table 3 and the other released CNN configs) with backprop or
counter-current learning.

    python main_class_cnn.py --yaml yaml/cnn/cifar10_ccl.yaml [--KEY VALUE ...]
"""
import sys
from functools import partial

from ccl.experiment import Script, main
from ccl.losses import cnn_alignment_loss, fused_cnn_alignment_loss
from ccl.tasks import Classification, flood_threshold
from utils.data.recipes import CNN_TRANSFORMS, cnn_data


def make_task(config, num_classes: int) -> Classification:
    pair_loss = fused_cnn_alignment_loss if config.fused_pair_loss else cnn_alignment_loss
    alignment = partial(pair_loss, loss_scale_C=config.loss_scale_C,
                        loss_scale_ssl=config.loss_scale_ssl)
    return Classification(num_classes, alignment, flood_threshold(config))


SCRIPT = Script(
    prog="main_class_cnn.py",
    description="Train a CNN on CIFAR-10, CIFAR-100, STL-10 (32x32), MNIST or FashionMNIST "
                "(32x32) with BP or CCL.",
    task="classification",
    architectures=("cnn", "cnn_pool"),
    datasets=tuple(CNN_TRANSFORMS),
    make_data=cnn_data,
    make_task=make_task,
    defaults={"task_transform": "none"},
    ignored=("loss_scale_D",),
)

if __name__ == "__main__":
    sys.exit(main(SCRIPT))
