"""Autoencoder tasks (docs/ALGORITHM.md section 6): how the forward input and the feedback target derive from
one batch of images x in [0, 1], shape (N, C, H, W).

Each task is a callable `(x, generator) -> (input, target)` that works on the whole batch at
once; random ones draw only from `generator`, so the run's seed fixes them. Input-side tasks
(DropColor, RandCrop) damage the input and ask for the clean image; target-side tasks (rotations,
shifts, brightness inversion) keep the input and ask for a transformed image.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

TaskTransform = Callable[[torch.Tensor, "torch.Generator | None"], tuple[torch.Tensor, torch.Tensor]]

# DropColor draws one of 5 outcomes per image: 0..2 names the colour channel to zero, 3 and 4
# leave the image whole (so a channel is dropped with probability 3/5, as released).
DROP_COLOR_OUTCOMES = 5
ERASED_PATCH = 32  # RandCrop zeroes a 32x32 square ...
ERASE_PROBABILITY = 0.5  # ... in half of the images


def same(x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    return x, x


def drop_color(x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero one random colour channel of the input, in 3 images out of 5."""
    n, channels = x.shape[:2]
    outcome = torch.randint(0, DROP_COLOR_OUTCOMES, (n,), device=x.device, generator=generator)
    keep = outcome[:, None] != torch.arange(channels, device=x.device)
    return x * keep[:, :, None, None], x


def erase_patch(x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """RandCrop: in half of the images, zero a 32x32 square of the input whose top-left corner is
    uniform in [0, H - 32) x [0, W - 32) ([0, 64) for STL-10's 96x96 images)."""
    n, _, height, width = x.shape
    erase = torch.rand(n, device=x.device, generator=generator) < ERASE_PROBABILITY
    top = torch.randint(0, height - ERASED_PATCH, (n,), device=x.device, generator=generator)
    left = torch.randint(0, width - ERASED_PATCH, (n,), device=x.device, generator=generator)
    rows = _within(torch.arange(height, device=x.device), top)
    cols = _within(torch.arange(width, device=x.device), left)
    patch = erase[:, None, None] & rows[:, :, None] & cols[:, None, :]
    return x.masked_fill(patch[:, None], 0), x


def _within(positions: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """(N, len(positions)): whether each position lies in [start, start + ERASED_PATCH)."""
    return (positions >= start[:, None]) & (positions < start[:, None] + ERASED_PATCH)


def rotate(quarter_turns: int) -> TaskTransform:
    def rotated_target(x, generator=None):
        return x, torch.rot90(x, quarter_turns, dims=(2, 3))
    return rotated_target


def roll(pixels: int, dim: int) -> TaskTransform:
    """Target shifted by `pixels` along `dim` (2: down, 3: right), wrapping around."""
    def rolled_target(x, generator=None):
        return x, torch.roll(x, pixels, dims=dim)
    return rolled_target


def invert_brightness(x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    return x, 1 - x


VERTICAL, HORIZONTAL = 2, 3

# config `task_transform` -> task
TASK_TRANSFORMS: dict[str, TaskTransform] = {
    "same": same,
    "DropColor": drop_color,
    "RandCrop": erase_patch,
    "rot90": rotate(1),
    "rot180": rotate(2),
    "shiftv5": roll(5, VERTICAL),
    "shiftv10": roll(10, VERTICAL),
    "shifth5": roll(5, HORIZONTAL),
    "shifth10": roll(10, HORIZONTAL),
    "bright": invert_brightness,
}
