"""The opt-in speed-ups of the training step: `compile: 1` (torch.compile), `precision: bf16`
(bfloat16 autocast) and, for the CNNs, `fused_pair_loss: 1` (ccl/losses.py). All are off by
default, and then the step is the plain float32 computation of the released code.
docs/PERFORMANCE.md measures what they gain and how much they change the numbers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ccl.config import KEYS
from ccl.rules import RULES, Rule
from utils.errors import ConfigError

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SPEED_KEYS = ("compile", "precision", "fused_pair_loss")  # config keys; their defaults: as released


def without_speed_ups(config):
    """The config with every speed-up at its default: the released numerics."""
    return config.replace(**{name: KEYS[name].default for name in SPEED_KEYS})


def check_supported(config, device) -> None:
    """A ConfigError naming the fix when this device cannot run the config's speed-ups."""
    device = torch.device(device)
    if config.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
                          f"support (it needs an Ampere or newer GPU); set precision: float32")
    if config.compile and not RULES[config.method].compiles:
        raise ConfigError(f"compile 1 does not support method {config.method}: torch.compile cannot "
                          f"trace its loss (ccl/rules.py says why); set compile: 0")
    if config.compile:
        problem = _compile_problem(device)
        if problem:
            raise ConfigError(f"compile {config.compile} is not available on {device.type}: {problem}; "
                              f"set compile: 0")


def _no_cuda_runtime_note(record: logging.LogRecord) -> bool:
    """False for the warning torch's C++ builder logs on import wherever a CUDA toolkit is
    installed without a GPU: compiling for the CPU does not use CUDA, so it is noise there."""
    return not str(record.msg).startswith("No CUDA runtime is found")


def _compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot generate code for `device` here, or None if it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if device.type == "cuda":
        from torch.utils._triton import has_triton  # noqa: PLC0415  (CUDA only)
        return None if has_triton() else "Triton is not installed (pip install triton)"
    logging.getLogger("torch.utils.cpp_extension").addFilter(_no_cuda_runtime_note)
    from torch._inductor.cpp_builder import get_cpp_compiler  # noqa: PLC0415  (CPU only)
    try:
        get_cpp_compiler()
    except Exception as error:  # noqa: BLE001  (whatever the search raises, there is no compiler)
        return f"no C++ compiler was found ({error}); install g++ or set CXX"
    return None


def training_loss(config, model, objective, rule: Rule, as_terms: bool = False) -> LossFunction:
    """`(inputs, targets) -> loss` (`as_terms`: its terms, where the rule has them) of `rule` on
    `model` and `objective`, under the config's precision and compiled if the config asks. Only the loss is compiled: the optimizer step stays eager,
    so a learning rate that changes never recompiles anything."""
    device_type = next(model.parameters()).device.type
    rule_loss = rule.loss_of(config, as_terms)

    def float32_loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return rule_loss(model, objective, inputs, targets)

    def bf16_loss(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return rule_loss(model, objective, inputs, targets)

    loss = bf16_loss if config.precision == "bf16" else float32_loss
    if not config.compile:
        return loss
    # Static shapes: the last, smaller batch of an epoch compiles once more rather than making
    # every step run shape-generic code.
    return torch.compile(loss, dynamic=False)
