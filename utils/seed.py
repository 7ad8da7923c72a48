"""One seed for every random number generator of a run, and deterministic kernels on request."""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum, unique

import numpy as np
import torch


@unique
class Stream(IntEnum):
    """The run's random streams beside the global generators (which draw the initial weights):
    each is a generator of its own, seeded by `stream_seed(seed, stream, epoch)`, so that no
    stream shifts another. An id never changes meaning: a new stream takes a new one."""

    ORDER = 0  # the training batches' order, per epoch (utils/data/loader.py)
    AUGMENT = 1  # the training batches' random transforms, per epoch
    DIRECT_FEEDBACK = 2  # DFA's and DRTP's fixed projections (ccl/fixed_feedback.py)
    PROBE = 3  # the random transforms of the analysis's probe batch (ccl/analysis)
    VALIDATION_AUGMENT = 4  # the validation batches' transforms under `augment_validation: 1`
    TP_NOISE = 5  # the noise of target propagation's feedback losses (ccl/target_prop.py)


def derived_seed(*entropy: int) -> int:
    """A well-mixed 63-bit seed from a few integers (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0] >> 1)


def stream_seed(seed: int, stream: Stream, epoch: int = 0) -> int:
    """The seed of `stream` (in `epoch`, for the streams drawn anew each epoch) of the run
    seeded `seed`. DFA's and DRTP's projections keep the seed the measured runs drew them from,
    derived_seed(seed, 2): SeedSequence pads its input with zeros, so that seed is also the one
    of epoch 2's batch order (docs/FIDELITY.md)."""
    if stream == Stream.DIRECT_FEEDBACK:
        return derived_seed(seed, stream)
    return derived_seed(seed, epoch, stream)


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
