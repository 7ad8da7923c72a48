"""One seed for every random number generator of a run, and deterministic kernels on request."""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """The global generators' states, for a checkpoint (tensors and plain values only, so the
    checkpoint loads with `weights_only=True`)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {"python": random.getstate(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss,
                        cached_gaussian),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# cuBLAS is only deterministic with a fixed workspace, which it reads when it starts
CUBLAS_WORKSPACE = ":4096:8"
NO_DETERMINISTIC_KERNEL = ("does not have a deterministic implementation", "CUBLAS_WORKSPACE_CONFIG")


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """While active (and `enabled`), every operator runs a deterministic kernel or raises a
    RuntimeError (`is_nondeterminism_error`); cuDNN does not pick its algorithms by timing
    them. Enter it before the first CUDA operation, for cuBLAS's workspace setting."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[1:]


def is_nondeterminism_error(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and any(text in str(error) for text in NO_DETERMINISTIC_KERNEL)
