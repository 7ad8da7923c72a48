"""Batch transforms on the device: uint8 images (N, C, H, W) in, float tensors out.

Every transform is a callable `(batch, generator) -> batch`; random ones draw from `generator`
(a torch.Generator on the batch's device), so one seed fixes every augmentation of a run.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

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


def _coin(n: int, probability: float, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < probability


def random_hflip(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = _coin(len(x), 0.5, x.device, generator)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class RandomCrop:
    """Pad every side by `padding` ('edge' repeats the border, 'zeros' pads with 0), then cut a
    `size` x `size` window (default: the input's size) at a uniformly random offset per image,
    as torchvision's RandomCrop."""

    def __init__(self, padding: int, mode: str = "zeros", size: int | None = None):
        if mode not in ("edge", "zeros"):
            raise ValueError(f"padding mode must be 'edge' or 'zeros', got {mode!r}")
        self.padding = padding
        self.pad_mode = "replicate" if mode == "edge" else "constant"
        self.size = size

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        n, _, height, width = x.shape
        p = self.padding
        out_height, out_width = (height, width) if self.size is None else (self.size, self.size)
        padded = F.pad(x, (p, p, p, p), mode=self.pad_mode)
        top = torch.randint(0, height + 2 * p - out_height + 1, (n,), device=x.device, generator=generator)
        left = torch.randint(0, width + 2 * p - out_width + 1, (n,), device=x.device, generator=generator)
        rows = (top[:, None] + torch.arange(out_height, device=x.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(out_width, device=x.device))[:, None, None, :]
        samples = torch.arange(n, device=x.device)[:, None, None, None]
        channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[samples, channels, rows, cols]


def _bilinear(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    return x.add_(0.5).floor_().clamp_(0, 255)


class Resize:
    """Bilinear resize to `size` x `size` (antialiased when shrinking), as torchvision's
    Resize(size) on the square images used here.

    A float batch is resized as torchvision resizes a tensor. A uint8 batch is resized as PIL
    resizes an 8-bit image (torchvision's Resize before ToTensor), and stays uint8: width first,
    then height, each pass rounded half up to a byte, as PIL does. This gave PIL's bytes exactly
    on 1500 random 96x96 images (docs/FIDELITY.md; checked in tests/test_data_cnn.py).
    """

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return _bilinear(x, self.size, self.size)
        narrowed = _round_half_up(_bilinear(x.float(), x.shape[2], self.size))
        return _round_half_up(_bilinear(narrowed, self.size, self.size)).to(torch.uint8)
