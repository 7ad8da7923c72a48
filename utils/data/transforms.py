"""Batch transforms on the device: uint8 images (N, C, H, W) in, float tensors out.

Every transform is a callable `(batch, generator) -> batch`; random ones draw from `generator`
(a torch.Generator on the batch's device), so one seed fixes every augmentation of a run.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Transform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def to_unit_range(images: torch.Tensor, generator=None) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1], as torchvision's ToTensor."""
    return images.float().div_(255)


class Normalize:
    """(x - mean) / std per channel, as torchvision's Normalize."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub_(self.mean).div_(self.std)


def flatten(x: torch.Tensor, generator=None) -> torch.Tensor:
    return x.flatten(1)


class Compose:
    def __init__(self, *transforms: Transform):
        self.transforms = transforms

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        for transform in self.transforms:
            x = transform(x, generator)
        return x
