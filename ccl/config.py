"""Experiment configuration: the released YAML keys, typed and checked, with a command-line
override for every one of them (`--lr_F 0.5`, `--seed 1`, ...).

A config file has the released three sections, `method`, `dataset` and `training`. `KEYS` below
is the single list of every key: its section, type, default and allowed values. A key without
a default must be in the file (as in the released scripts); an unknown key, a key in the wrong
section or a value of the wrong type is an error that names the key and the fix.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ccl.rules import FEEDBACK_FIXED, RULES, rule_keys
from models import ARCHITECTURES
from models.layers import ACTIVATIONS, OUTPUT_ACTIVATIONS
from utils.data.datasets import SOURCE_OF
from utils.data.task_transforms import TASK_TRANSFORMS
from utils.errors import ConfigError

SECTIONS = ("method", "dataset", "training")
REQUIRED = object()
# the parameters and the optimizers hold float32: a finite float64 past this is infinite there
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Key:
    section: str
    type: type
    help: str
    default: Any = REQUIRED
    choices: tuple = ()
    minimum: float | None = None  # smallest allowed value
    maximum: float | None = None  # largest allowed value
    above: float | None = None  # values must exceed this
    below: float | None = None  # values must stay under this
    optional: bool = False  # None is an allowed value
    parse: Callable[[Any], Any] | None = None  # the value's meaning; raises ValueError when it has none

    def allows(self, value) -> bool:
        return ((self.minimum is None or value >= self.minimum)
                and (self.maximum is None or value <= self.maximum)
                and (self.above is None or value > self.above)
                and (self.below is None or value < self.below))

    def bounds(self) -> str:
        """The allowed numbers in words: 'positive', '>= 0', '>= 0 and < 1', ..."""
        if self.type is int and self.minimum == 1 and self.maximum is None:
            return "positive"
        limits = ((">=", self.minimum), (">", self.above), ("<=", self.maximum), ("<", self.below))
        return " and ".join(f"{sign} {_number(limit)}" for sign, limit in limits if limit is not None)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# The allowed values of the keys that name an implementation come from the registries that hold
# the implementations, so a new rule, architecture, activation, dataset or task transform is
# registered once and becomes a valid value everywhere (config files, flags, --help).
ACTIVATION_NAMES = tuple(ACTIVATIONS)
TASK_TRANSFORM_NAMES = ("none", *TASK_TRANSFORMS)  # none: a classification run, which has none

KEYS: dict[str, Key] = {
    # --- method ---
    "method": Key("method", str, "learning rule", choices=tuple(RULES)),
    "architecture": Key("method", str, "dual network architecture",
                         choices=tuple(ARCHITECTURES)),
    "task": Key("method", str, "problem the entry script solves (fixed by the script)",
                 default=None, choices=("classification", "autoencoder"), optional=True),
    "task_transform": Key("method", str, "autoencoder: how the feedback target derives from the input",
                           default=None, choices=TASK_TRANSFORM_NAMES, optional=True),
    "act_F": Key("method", str, "forward network activation", choices=ACTIVATION_NAMES),
    "act_B": Key("method", str, "feedback network activation", choices=ACTIVATION_NAMES),
    "fw_bn": Key("method", int, "forward BatchNorm: 0 none, 1 on the map's input, 2 on its output",
                  choices=(0, 1, 2)),
    "bw_bn": Key("method", int, "feedback BatchNorm: 0 none, 1 on the map's input, 2 on its output",
                  choices=(0, 1, 2)),
    "bias_init": Key("method", str, "'zero': biases start at 0; 'none': PyTorch's default init",
                      choices=("zero", "none")),
    "bn_affine": Key("method", int, "BatchNorm affine flag (its parameters never train)",
                      choices=(0, 1)),
    # --- dataset ---
    "dataset": Key("dataset", str, "dataset name",
                    choices=tuple(SOURCE_OF)),
    "batchsize": Key("dataset", int, "training batch size", minimum=1),
    "num_chn": Key("dataset", int, "input channels (must match the dataset)", minimum=1),
    "num_classes": Key("dataset", int, "classes (must match the dataset; optional)",
                        default=None, minimum=1, optional=True),
    # --- training ---
    "mode": Key("training", str, "only 'train' is released", default="train", choices=("train",)),
    "epochs": Key("training", int, "training epochs", minimum=1),
    "lr_F": Key("training", float, "forward parameters' learning rate", minimum=0),
    "lr_B": Key("training", float, "feedback parameters' learning rate", minimum=0),
    # momentum 1 or more never forgets a gradient: the velocity grows without bound
    "mmt_F": Key("training", float, "forward SGD momentum", minimum=0, below=1),
    "mmt_B": Key("training", float, "feedback SGD momentum", minimum=0, below=1),
    "wd_F": Key("training", float, "forward weight decay", minimum=0),
    "wd_B": Key("training", float, "feedback weight decay", minimum=0),
    "warmup": Key("training", int, "warm-up steps (loss scaled by (s+1)/warmup); 0 = off", minimum=0),
    "tmax": Key("training", int, "cosine annealing period in epochs; 0 = constant learning rate",
                 minimum=0),
    "eta_min": Key("training", float, "cosine annealing's final learning rate (absolute)", minimum=0),
    "optimizer": Key("training", str, "only 'SGD' is released", default="SGD", choices=("SGD",)),
    "GradC": Key("training", int, "gradient centralisation: 1 on, 0 off", choices=(0, 1)),
    "loss_scale_C": Key("training", float, "weight of the alignment term", minimum=0),
    "loss_scale_ssl": Key("training", float, "CNN: weight of the two decorrelation terms",
                           default=0.5, minimum=0),
    "loss_scale_D": Key("training", float, "autoencoder: weight of the normalised term",
                         default=1.0, minimum=0),
    "grad_clip_F": Key("training", float, "forward gradient-norm clip; 0 = off", minimum=0),
    "grad_clip_B": Key("training", float, "feedback gradient-norm clip; 0 = off", minimum=0),
    "filter_target": Key("training", float, "flooding on (non-zero) or off (0)", minimum=0),
    "seed": Key("training", int, "seed of every random choice of the run", minimum=0,
                 maximum=2**32 - 1),  # NumPy's seeds are 32-bit
    # --- added by this project (not in the released files) ---
    "flood_threshold": Key("training", float,
                            "flooding drops samples with |p(true) - 1| below this (released: 0.1)",
                            default=0.1, above=0, maximum=1),
    "warmup_counter": Key("training", str,
                           "warm-up factor (i+1)/warmup with i the global step ('step') or, as the "
                           "released scripts do, the batch index within the epoch ('batch_in_epoch')",
                           default="step", choices=("step", "batch_in_epoch")),
    "augment": Key("dataset", int,
                    "1: training batches get the dataset's augmentation (crops, flips), as released; "
                    "0: they are made as evaluation batches", default=1, choices=(0, 1)),
    "augment_validation": Key("dataset", int,
                               "1: validation batches get the training augmentation, as in the released "
                               "CIFAR CNN pipelines; 0: the evaluation transform", default=0, choices=(0, 1)),
    "train_batches_per_epoch": Key("training", int,
                                    "stop each epoch after this many batches; 0 = whole training set",
                                    default=0, minimum=0),
    "deterministic": Key("training", int,
                         "1: deterministic kernels (cuDNN, cuBLAS), so a CUDA run is reproducible to the "
                         "bit (slower); an operator without one is an error. The CPU's kernels already are",
                         default=0, choices=(0, 1)),
    # the paper's analyses during training (ccl/measures.py); off by default: nothing changes
    "analysis_every": Key("training", int,
                           "every this many epochs (and before the first, and after the last) "
                           "measure CKA, weight cosines and gradient angles on a fixed probe batch "
                           "of validation images, into analysis.jsonl; 0 = off. The training is "
                           "bit-identical either way", default=0, minimum=0),
    "analysis_samples": Key("training", int,
                             "the probe batch of analysis_every and analysis_steps: the first N "
                             "images of analysis_split (the validation split is a random draw from "
                             "the seed; the test set in its file order)",
                             default=1000, minimum=1),
    "analysis_steps": Key("training", str,
                           "comma-separated global steps at which to measure the same as analysis_every "
                           "does, e.g. 0,20,40,80,160 (0 = before the first step; a step that ends an "
                           "epoch, after it); empty = none. The training is bit-identical either way",
                           default="", parse=lambda text: step_numbers(text)),
    "analysis_split": Key("training", str,
                           "the probe batch's images: the validation split (val) or the test set (test, "
                           "as the paper's Figure 6)", default="val", choices=("val", "test")),
    "analysis_snapshots": Key("training", int,
                               "1: also keep the model's weights at every analysis_steps step, as "
                               "RUN_DIR/snapshots/step<S>.pt (for python -m ccl.figures tsne)",
                               default=0, choices=(0, 1)),
    # opt-in speed-ups of the training step (docs/PERFORMANCE.md); the defaults are the released numerics
    "compile": Key("training", int,
                    "1: torch.compile the training step's forward, feedback and losses (and so their "
                    "backward); the first steps of "
                    "each batch shape compile; results differ from 0 in the last bits",
                    default=0, choices=(0, 1)),
    "precision": Key("training", str,
                      "bf16: the training step runs under bfloat16 autocast (matmuls and convolutions "
                      "in bfloat16; parameters, optimizer and evaluation stay float32); float32: as released",
                      default="float32", choices=("float32", "bf16")),
    # target propagation (ccl/target_prop.py): the FW-DTP code's flags; read by its five methods only
    "act_F_top": Key("method", str,
                      "activation of the forward network's output map: 'none' (the logits as they are, "
                      "as released) or 'bn' (parameter-free batch standardisation, FWDTP-BN's linear-BN)",
                      default="none", choices=tuple(OUTPUT_ACTIVATIONS)),
    "weight_init": Key("method", str,
                        "'default': PyTorch's init; 'orthogonal' (MLP): the FW-DTP code's, layer by layer "
                        "from the seed, the forward weight orthogonal, then the feedback weight uniform "
                        "in +-feedback_init_range", default="default", choices=("default", "orthogonal")),
    "feedback_init_range": Key("method", float,
                                "weight_init orthogonal: the feedback weights' uniform range (released: "
                                "0.01 when they train, 0.001 for FW-DTP's fixed ones)",
                                default=0.01, above=0),
    "tp_step_size": Key("training", float,
                         "TP: the top target's step size beta, t_L = a_L - beta * dCE/da_L "
                         "(--stepsize; the grid's middle value)", default=0.01, above=0),
    "tp_noise_std": Key("training", float,
                         "TP: std of the noise of the feedback losses (--std_backward, its default)",
                         default=0.01, minimum=0),
    "tp_feedback_calls": Key("training", int,
                              "TP: feedback calls on each batch before its forward step (released: K = "
                              "--epochs_backward, which also sets tp_pretrain_epochs)", default=5, minimum=0),
    "tp_pretrain_epochs": Key("training", int,
                               "TP: epochs of feedback training (one call per batch) before the first "
                               "forward step (released: K = --epochs_backward)", default=5, minimum=0),
    "fused_pair_loss": Key("training", int,
                            "CNN: 1 computes each layer-pair loss and its gradient in closed form "
                            "(fewer products and passes over the activations); results differ from 0 "
                            "in the last bits", default=0, choices=(0, 1)),
}


class Config:
    """Immutable, validated values of every key, read as attributes (`config.lr_F`)."""

    def __init__(self, values: Mapping[str, Any]):
        missing = [name for name in KEYS if name not in values]
        if missing:
            raise ConfigError(f"config is missing {', '.join(missing)}")
        object.__setattr__(self, "_values", {name: values[name] for name in KEYS})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is immutable; use config.replace(key=value)")

    def __eq__(self, other) -> bool:
        return isinstance(other, Config) and self._values == other._values

    def __repr__(self) -> str:
        return f"Config({self._values})"

    def replace(self, **changes) -> "Config":
        for name, value in changes.items():
            check_value(name, value)
        return Config({**self._values, **changes})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def sections(self) -> dict[str, dict[str, Any]]:
        """The values grouped by the released sections, ready to be written as YAML."""
        grouped = {section: {} for section in SECTIONS}
        for name, value in self._values.items():
            grouped[KEYS[name].section][name] = value
        return grouped


def closest(name: str, candidates) -> str:
    """' (did you mean X?)' for the candidate closest to a misspelt name, else ''."""
    candidates = list(candidates)  # may be an iterator: read twice below
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if not match:
        lowered = {c.lower(): c for c in candidates}
        match = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" (did you mean {match[0]}?)" if match else ""


def _type_name(type_: type) -> str:
    return {int: "an integer", float: "a number", str: "a string"}[type_]


def coerce(name: str, value: Any, source: str) -> Any:
    """Return `value` as the key's type, or raise a ConfigError naming key, value and source."""
    key = KEYS[name]
    if value is None and key.optional:
        return None
    wrong = ConfigError(f"{source}: {name} must be {_type_name(key.type)}, got {value!r}")
    if isinstance(value, bool):  # YAML true/false: the released files spell switches 0/1
        raise wrong
    if key.type is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise wrong
    if key.type is float:
        if isinstance(value, str):  # PyYAML reads 1e-06 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise wrong from None
        if not isinstance(value, int | float):
            raise wrong
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {name} must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise wrong
    return value


def step_numbers(text: str) -> tuple[int, ...]:
    """'0, 20,40' -> (0, 20, 40): distinct global steps >= 0, ascending; '' -> ()."""
    steps = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    if any(step < 0 for step in steps) or list(steps) != sorted(set(steps)):
        raise ValueError("the steps must be distinct, ascending and >= 0")
    return steps


def check_value(name: str, value: Any, source: str = "config") -> None:
    key = KEYS[name]
    if value is None and key.optional:
        return
    if key.parse is not None:
        try:
            key.parse(value)
        except ValueError as error:
            raise ConfigError(f"{source}: {name} {value!r} is not valid ({key.help}): {error}") from None
    if key.choices and value not in key.choices:
        raise ConfigError(f"{source}: {name} must be one of {', '.join(map(str, key.choices))}; "
                          f"got {value!r}{closest(str(value), map(str, key.choices))}")
    if key.type in (int, float) and not key.allows(value):
        raise ConfigError(f"{source}: {name} must be {key.bounds()} ({key.help}), got {value!r}")
    if key.type is float and abs(value) > FLOAT32_MAX:
        raise ConfigError(f"{source}: {name} must be within float32's range (magnitude at most "
                          f"{FLOAT32_MAX:.4g}), got {value!r}")


def parse_cli_value(name: str, text: str) -> Any:
    """A command-line string as the key's value; 'none'/'null' clears an optional key."""
    key = KEYS[name]
    if key.optional and key.type is not str and text.lower() in ("none", "null"):
        return None
    if key.type is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--{name} must be an integer, got {text!r}") from None
    if key.type is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"--{name} must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"--{name} must be a finite number, got {text!r}")
        return value
    return text


class DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a config that sets `lr_F` twice is a mistake
    whichever value was meant, so it is refused with both lines."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise DuplicateKey(f"key {key!r} appears twice, on lines {first_line[key]} and {line}; "
                                   f"keep one")
            first_line[key] = line
        return super().construct_mapping(node, deep)


def load_yaml_mapping(path: str | Path) -> dict:
    """The mapping at the top of a YAML file, or a ConfigError saying why there is none."""
    path = Path(path)
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {path} {problem}; pass --yaml with the path of a "
                          f"file such as yaml/mlp/mnist_ccl.yaml")
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    except DuplicateKey as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path} must hold the sections {', '.join(SECTIONS)}")
    return document


def section_values(document: Mapping, source: str, extra_sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flat key -> value mapping of a config document, every key known and in its section.
    `extra_sections` may also appear; their contents are not config keys and are skipped."""
    values = {}
    for section, entries in document.items():
        if section in extra_sections:
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {section!r}{closest(str(section), SECTIONS)}; "
                              f"the sections are {', '.join(SECTIONS)}")
        if not isinstance(entries, dict):
            raise ConfigError(f"{source}: section {section} must be a mapping of key: value")
        for name, value in entries.items():
            if name not in KEYS:
                raise ConfigError(f"{source}: unknown key {name!r} in section {section}"
                                  f"{closest(str(name), KEYS)}")
            if KEYS[name].section != section:
                raise ConfigError(f"{source}: key {name} belongs in section {KEYS[name].section}, "
                                  f"not {section}")
            values[name] = coerce(name, value, source)
    return values


def read_yaml_sections(path: str | Path) -> dict[str, Any]:
    """The flat key -> value mapping of a config file, every key known and in its section."""
    return section_values(load_yaml_mapping(path), str(path))


def build_config(file_values: Mapping[str, Any], overrides: Mapping[str, Any],
                 defaults: Mapping[str, Any], source: str) -> Config:
    """File values, then command-line overrides, over the script's and the keys' defaults."""
    values = {}
    for name, key in KEYS.items():
        if name in overrides:
            values[name] = overrides[name]
        elif name in file_values:
            values[name] = file_values[name]
        elif name in defaults:
            values[name] = defaults[name]
        elif key.default is not REQUIRED:
            values[name] = key.default
        else:
            raise ConfigError(f"{source}: key {name} is missing; add it to section {key.section} "
                              f"({key.help}) or pass --{name}")
    for name, value in values.items():
        check_value(name, value, source if name not in overrides else f"--{name}")
    return Config(values)


def _is_set(name: str, value: Any) -> bool:
    """Whether a key holds other than its default (for a key every config must give, other
    than off)."""
    default = KEYS[name].default
    return bool(value) if default is REQUIRED else value != default


def ignored_settings(config: Config, unread: tuple[str, ...] = ()) -> list[str]:
    """Values that have no effect in this combination of keys (the released code ignores them
    too): one line each, for a warning. Settings the released configs themselves carry (lr_B
    with BP, eta_min without a schedule) are not listed: they are inert by design; nor are the
    `unread` keys, which the script never reads and warns about itself."""
    notes = []
    rule = RULES[config.method]
    for name, readers in rule_keys().items():
        if name not in rule.reads and name not in unread and _is_set(name, getattr(config, name)):
            notes.append(f"{name} is ignored with method {config.method}: only {', '.join(readers)} "
                         f"read{'s' if len(readers) == 1 else ''} it")
    # BP's released configs carry an inert lr_B and are not warned about; the baselines' configs
    # are ours and set lr_B: 0, so a non-zero one with them is a mistake worth a line
    if rule.feedback == FEEDBACK_FIXED and config.lr_B:
        fixed = [name for name, other in RULES.items() if other.feedback == FEEDBACK_FIXED]
        notes.append(f"lr_B {config.lr_B:g} is ignored with method {config.method}: the feedback "
                     f"network never trains under {', '.join(fixed)}")
    if config.weight_init == "default" and config.feedback_init_range != KEYS["feedback_init_range"].default:
        notes.append("feedback_init_range is ignored while weight_init is default")
    if not config.filter_target and config.flood_threshold != KEYS["flood_threshold"].default:
        notes.append("flood_threshold is ignored while filter_target is 0 (flooding off)")
    analysed = config.analysis_every or config.analysis_steps
    if not analysed and config.analysis_samples != KEYS["analysis_samples"].default:
        notes.append("analysis_samples is ignored while analysis_every is 0 and analysis_steps is "
                     "empty (no analysis)")
    if not analysed and config.analysis_split != KEYS["analysis_split"].default:
        notes.append("analysis_split is ignored while analysis_every is 0 and analysis_steps is "
                     "empty (no analysis)")
    if not config.analysis_steps and config.analysis_snapshots:
        notes.append("analysis_snapshots is ignored while analysis_steps is empty (no snapshots)")
    if not config.warmup and config.warmup_counter != KEYS["warmup_counter"].default:
        notes.append("warmup_counter is ignored while warmup is 0 (no warm-up)")
    trained = {"lr_F": config.lr_F, **({"lr_B": config.lr_B} if rule.trains_feedback else {})}
    for name, lr in trained.items():
        if config.tmax and config.eta_min > lr:
            notes.append(f"eta_min {config.eta_min:g} is above {name} {lr:g}: the cosine schedule "
                         f"raises that learning rate")
    return notes


def config_yaml(config: Config, run: Mapping[str, Any]) -> str:
    """YAML text of the resolved config plus a `run` section (how it was started)."""
    return yaml.safe_dump({**config.sections(), "run": dict(run)}, sort_keys=False)
