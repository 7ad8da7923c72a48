"""What the benchmark trains: a case's released CCL config (BP: the same config with
`method: BP`), built as every run is built (`ccl.experiment.build`: its entry script's data
recipe, model and objective, seeded from the config), on random uint8 images of the dataset's
size held on the device (the real batches, loader and transforms, minus the disk).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ccl.acceleration import check_supported
from ccl.config import Config, build_config, read_yaml_sections
from ccl.experiment import Experiment, Script, build
from ccl.objectives import in_order_sum
from ccl.optim import DualOptimizer
from ccl.scripts import BY_CONFIG_FOLDER
from ccl.trainer import Training, train_step
from utils.data import SOURCE_OF, SOURCES, Splits
from utils.data.datasets import VAL_FRACTION
from utils.errors import ConfigError
from utils.provenance import REPO_ROOT

# benchmark case -> the released CCL config it trains
CASES = {
    "mlp_mnist": "yaml/mlp/mnist_ccl.yaml",
    "mlp_cifar10": "yaml/mlp/cifar10_ccl.yaml",
    "cnn": "yaml/cnn/mnist_ccl.yaml",
    "cnn_pool": "yaml/cnn/cifar10_ccl.yaml",
    "autoencoder": "yaml/cnn_ae/stl10_ccl_legacy.yaml",
}
METHODS = ("BP", "CCL")

# the files each dataset source reads: image shape, (official training, test) set sizes
IMAGE_SHAPES = {"MNIST": (1, 28, 28), "FashionMNIST": (1, 28, 28), "CIFAR10": (3, 32, 32),
                "CIFAR100": (3, 32, 32), "STL10": (3, 96, 96)}
OFFICIAL_SIZES = {"MNIST": (60000, 10000), "FashionMNIST": (60000, 10000),
                  "CIFAR10": (50000, 10000), "CIFAR100": (50000, 10000), "STL10": (5000, 8000)}


def load_config(path: str | Path, overrides: dict) -> tuple[Config, Script]:
    """The config of a released YAML file with `overrides`, and the entry script that runs it."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path  # the released configs, from any working directory
    script = BY_CONFIG_FOLDER.get(path.parent.name)
    if script is None:
        raise ConfigError(f"{path}: a config in yaml/{{{','.join(BY_CONFIG_FOLDER)}}}/ is needed, the "
                          f"folder names the entry script that trains it")
    config = build_config(read_yaml_sections(path), overrides, {"task": script.task, **script.defaults},
                          str(path))
    script.validate(config)
    return config, script


def official_split_sizes(dataset: str) -> tuple[int, int, int]:
    """(train, validation, test) sizes of a dataset key, split as `load_splits` splits it."""
    train, test = OFFICIAL_SIZES[SOURCE_OF[dataset]]
    num_train = int(train * (1 - VAL_FRACTION))
    return num_train, train - num_train, test


def synthetic_splits(dataset: str, sizes: tuple[int, int, int], device, seed: int = 0) -> Splits:
    """Random uint8 images and labels shaped like `dataset`'s, on `device`."""
    source = SOURCES[SOURCE_OF[dataset]]
    generator = torch.Generator().manual_seed(seed)

    def split(n):
        images = torch.randint(0, 256, (n, *IMAGE_SHAPES[source.name]), generator=generator,
                               dtype=torch.uint8)
        labels = torch.randint(0, source.num_classes, (n,), generator=generator)
        return images.to(device), labels.to(device)

    return Splits(*(split(n) for n in sizes), source.num_classes)


@dataclass
class Case:
    """One config ready to train: the experiment and what its training step needs."""

    experiment: Experiment
    training: Training

    @property
    def optimizer(self) -> DualOptimizer:
        return self.training.optimizer

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training step's loss, as the trainer's step adds it up from its terms."""
        return in_order_sum(self.training.loss(inputs, targets))

    @property
    def config(self) -> Config:
        return self.experiment.config

    @property
    def model(self) -> torch.nn.Module:
        return self.experiment.model

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One training step, the trainer's own."""
        loss, _ = train_step(self.training, inputs, targets)
        return loss


def build_case(config: Config, script: Script, splits: Splits, device) -> Case:
    check_supported(config, device)
    if config.compile:
        # The code compiled for earlier cases is of no use to this one, and torch.compile stops
        # compiling a function (and silently runs it eagerly) after a few recompilations.
        torch._dynamo.reset()
    experiment = build(script, config, device, splits=splits)
    training = Training.of(experiment)
    # time the steady state: past the warm-up, whose loss scaling costs a kernel more
    training.optimizer.steps_taken = config.warmup
    return Case(experiment, training)
