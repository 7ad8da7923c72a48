"""Whole training epochs through the trainer: the released config's epoch on synthetic data of
the dataset's real size held on the device, and real MNIST fed by our pipeline against the
conventional torchvision one.

Each timing is the trainer's own: the `seconds` of an epoch in its metrics, from the first batch
to the last step's result (validation excluded). The first epoch of a run pays the warm-up
(CUDA context, kernel loading, compilation), so runs take two epochs and the second is the one
compared.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from ccl.bench.cases import Case, build_case, load_config, official_split_sizes, synthetic_splits
from ccl.run_dir import RunDir
from ccl.trainer import Trainer
from utils.data import Splits, load_splits, split_indices
from utils.data.recipes import MLP_NORMALISATION

MNIST_CONFIG = "yaml/mlp/mnist_ccl.yaml"


def train_epochs(case: Case, train_loader, epochs: int) -> list[dict]:
    """Train `case`'s model for `epochs` epochs on `train_loader` through the trainer; returns
    its metrics, one row per epoch."""
    experiment = dataclasses.replace(
        case.experiment, config=case.config.replace(epochs=epochs),
        data=dataclasses.replace(case.experiment.data, train=train_loader))
    with tempfile.TemporaryDirectory(prefix="ccl-bench-") as run_dir:
        trainer = Trainer(experiment, RunDir(run_dir), log=lambda line: None)
        trainer.fit()
    return trainer.history


@dataclass
class EpochResult:
    config: str
    train_samples: int
    batch_size: int
    epoch_seconds: list[float]
    eval_seconds: list[float]

    def as_dict(self) -> dict:
        last = self.epoch_seconds[-1]
        return {**vars(self), "samples_per_s": self.train_samples / last}


def benchmark_epoch(config_path: str, overrides: dict, device, epochs: int,
                    sizes: tuple[int, int, int] | None = None) -> EpochResult:
    """`epochs` epochs of a config on synthetic data of the dataset's official split sizes
    (or `sizes`: train, validation, test)."""
    config, script = load_config(config_path, overrides)
    sizes = sizes or official_split_sizes(config.dataset)
    case = build_case(config, script, synthetic_splits(config.dataset, sizes, device), device)
    history = train_epochs(case, case.experiment.data.train, epochs)
    return EpochResult(str(config_path), sizes[0], config.batchsize,
                       [row["seconds"] for row in history], [row["eval_seconds"] for row in history])


class TorchvisionLoader:
    """The released MLP pipeline behind the loader interface the trainer reads:
    `datasets.MNIST` with per-sample ToTensor + Normalize on the CPU, a shuffling `DataLoader`
    without workers, each batch moved to the device and flattened."""

    def __init__(self, data_root: Path, train_indices: torch.Tensor, batch_size: int, device):
        mean, std = MLP_NORMALISATION["MNIST"]
        per_sample = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
        dataset = datasets.MNIST(str(data_root), train=True, download=False, transform=per_sample)
        self.dataloader = DataLoader(Subset(dataset, train_indices.tolist()), batch_size=batch_size,
                                     shuffle=True, num_workers=0)
        self.device = device

    def __len__(self) -> int:
        return len(self.dataloader)

    def epoch(self, epoch: int = 0, start: int = 0, generator_state=None):
        for images, labels in self.dataloader:
            yield images.to(self.device).flatten(1), labels.to(self.device)


@dataclass
class PipelineResult:
    train_samples: int
    batch_size: int
    ours_seconds: list[float]
    torchvision_seconds: list[float]

    @property
    def speedup(self) -> float:
        return self.torchvision_seconds[-1] / self.ours_seconds[-1]

    def as_dict(self) -> dict:
        return {**vars(self), "speedup": self.speedup}


def load_mnist(data_root: Path) -> Splits:
    """MNIST split as the pipeline comparison's config splits it (on the CPU)."""
    config, _ = load_config(MNIST_CONFIG, {})
    return load_splits(config.dataset, data_root, config.seed)


def compare_pipelines(data_root: Path, splits: Splits, overrides: dict, device, epochs: int,
                      limit: int | None = None) -> PipelineResult:
    """The MNIST MLP CCL config trained on the same training images (`splits`, from
    `load_mnist`; the first `limit` of each split if given), from the same initial weights, by
    each pipeline."""
    config, script = load_config(MNIST_CONFIG, overrides)
    train_indices, _ = split_indices(len(splits.train[0]) + len(splits.val[0]), config.seed)
    if limit is not None:
        splits = Splits(*((images[:limit], labels[:limit]) for images, labels in
                          (splits.train, splits.val, splits.test)), splits.num_classes)
    ours = build_case(config, script, splits.to(device), device)
    ours_history = train_epochs(ours, ours.experiment.data.train, epochs)
    theirs = build_case(config, script, splits.to(device), device)
    loader = TorchvisionLoader(data_root, train_indices[:len(splits.train[0])], config.batchsize, device)
    theirs_history = train_epochs(theirs, loader, epochs)
    return PipelineResult(len(splits.train[0]), config.batchsize,
                          [row["seconds"] for row in ours_history],
                          [row["seconds"] for row in theirs_history])
