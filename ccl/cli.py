"""The command line shared by the entry scripts: `--yaml PATH`, run options, and `--KEY VALUE`
for every config key. Anything it does not know is an error (exit code 2) that names it."""
from __future__ import annotations

import argparse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ccl.config import KEYS, SECTIONS, Config, build_config, closest, parse_cli_value, read_yaml_sections
from ccl.distributed import BACKENDS
from ccl.loggers import LOGGER_NAMES
from ccl.run_dir import RunDir
from utils.errors import ConfigError

DEFAULT_DATA_ROOT = Path("data")
# Flags that may change when a run is resumed: they do not change its numbers.
RESUMABLE_FLAGS = ("data_root", "device", "dist_backend", "logger", "wandb_project", "wandb_entity")


@dataclass(frozen=True)
class RunOptions:
    yaml: Path | None
    data_root: Path
    out_dir: Path
    device: str
    resume: bool
    overwrite: bool
    dist_backend: str | None = None  # under torchrun: gloo or nccl (None: from the device)
    loggers: tuple[str, ...] = ()
    wandb_project: str | None = None
    wandb_entity: str | None = None
    run_id: str | None = None  # names the run in the loggers across resumes (config.yaml keeps it)

    def as_dict(self) -> dict[str, Any]:
        return {"yaml": str(self.yaml) if self.yaml else None, "data_root": str(self.data_root),
                "out_dir": str(self.out_dir), "device": self.device, "id": self.run_id,
                "logger": list(self.loggers), "wandb_project": self.wandb_project,
                "wandb_entity": self.wandb_entity}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors go through the same path as ours
        raise ConfigError(message)


def _metavar(key) -> str:
    return "{" + ",".join(map(str, key.choices)) + "}" if key.choices else key.type.__name__.upper()


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description, allow_abbrev=False)
    run = parser.add_argument_group("run options")
    run.add_argument("--yaml", type=Path, help="config file, e.g. yaml/mlp/mnist_ccl.yaml")
    run.add_argument("--data_root", type=Path, default=None,
                     help="datasets in torchvision's layout, see prepare_data.py (default: ./data; "
                          "on --resume: the run's)")
    run.add_argument("--out_dir", type=Path, default=None,
                     help="run directory (default: runs/<config folder>/<config name>[-overrides]/seed<seed>)")
    run.add_argument("--device", default=None,
                     help="cpu, cuda or cuda:N (default: cuda if available; on --resume: the run's)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", default=None,
                     help="continue the interrupted run in RUN_DIR with its saved config")
    run.add_argument("--overwrite", action="store_true",
                     help="delete an existing run directory and start again")
    run.add_argument("--dist_backend", choices=BACKENDS, default=None,
                     help="under torchrun: the processes' communication backend (default: gloo on "
                          "the CPU, nccl on CUDA); see docs/SCALING.md")
    run.add_argument("--logger", nargs="+", choices=(*LOGGER_NAMES, "none"), default=None,
                     help="also log metrics (and analysis records) to TensorBoard (RUN_DIR/tensorboard) "
                          "and/or Weights & Biases; none: no logger (default: none; on --resume: "
                          "the run's)")
    run.add_argument("--wandb_project", default=None,
                     help="W&B project (default: WANDB_PROJECT, else ccl; on --resume: the run's)")
    run.add_argument("--wandb_entity", default=None,
                     help="W&B entity (default: WANDB_ENTITY, else the API key's; on --resume: the run's)")
    for section in SECTIONS:
        group = parser.add_argument_group(f"config keys, section '{section}' (override the YAML)")
        for name, key in KEYS.items():
            if key.section == section:
                group.add_argument(f"--{name}", dest=f"key:{name}", metavar=_metavar(key),
                                   default=argparse.SUPPRESS, help=key.help)
    return parser


def _reject_unknown(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> None:
    flags = [option for action in parser._actions for option in action.option_strings]
    for word in unknown:
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            raise ConfigError(f"unknown flag {flag}{closest(flag, flags)}; see --help for every flag")
        raise ConfigError(f"unexpected argument {word!r}: every value follows a --flag")


def resolve_device(requested: str | None, flag: str = "--device") -> str:
    """The device a run uses; `flag` is the option that asked for it, named by the errors."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag} {requested!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{flag} {requested}: CUDA is not available here; use {flag} cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{flag} {requested}: there are only {torch.cuda.device_count()} CUDA "
                          f"devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag} {requested}: only cpu and cuda are supported")
    return str(device)


def default_out_dir(yaml_path: Path, overrides: Mapping[str, Any], seed: int,
                    root: Path = Path("runs")) -> Path:
    """<root>/<config folder>/<config name>[-key=value...]/seed<seed>: distinct settings never
    share a directory, and a config from anywhere (`--yaml ../x.yaml`) stays under the root."""
    folder = Path(yaml_path).resolve().parent.name or "configs"
    name = Path(yaml_path).stem + "".join(f"-{key}={value}" for key, value in sorted(overrides.items())
                                          if key != "seed")
    return Path(root) / folder / name / f"seed{seed}"


def parse_command_line(argv: Sequence[str] | None, prog: str, description: str,
                       script_defaults: Mapping[str, Any]) -> tuple[Config, RunOptions]:
    parser = build_parser(prog, description)
    args, unknown = parser.parse_known_args(argv)
    _reject_unknown(parser, unknown)
    overrides = {name.split(":", 1)[1]: parse_cli_value(name.split(":", 1)[1], value)
                 for name, value in vars(args).items() if name.startswith("key:")}
    if args.resume is not None:
        return _resumed(args, overrides)
    device = resolve_device(args.device)
    if args.yaml is None:
        raise ConfigError("--yaml is required (e.g. --yaml yaml/mlp/mnist_ccl.yaml), "
                          "or --resume RUN_DIR to continue a run")
    config = build_config(read_yaml_sections(args.yaml), overrides, script_defaults, str(args.yaml))
    out_dir = args.out_dir or default_out_dir(args.yaml, overrides, config.seed)
    return config, RunOptions(args.yaml, args.data_root or DEFAULT_DATA_ROOT, out_dir, device,
                              False, args.overwrite, args.dist_backend, **_logging(args, {}),
                              run_id=uuid.uuid4().hex)


def _logging(args, run: Mapping[str, Any]) -> dict[str, Any]:
    """The loggers and W&B names of the command line, else those saved in the run section."""
    names = args.logger if args.logger is not None else run.get("logger") or []
    loggers = tuple(dict.fromkeys(name for name in names if name != "none"))
    if "none" in names and len(names) > 1:
        raise ConfigError(f"--logger {' '.join(names)}: none means no logger; give it alone")
    wandb = {flag: getattr(args, flag) or run.get(flag) for flag in ("wandb_project", "wandb_entity")}
    given = [f"--{flag}" for flag in wandb if getattr(args, flag)]
    if given and "wandb" not in loggers:
        raise ConfigError(f"{' and '.join(given)} name where W&B logs: add --logger wandb")
    return {"loggers": loggers, **wandb}


def _resumed(args, overrides) -> tuple[Config, RunOptions]:
    changed = [f"--{name}" for name in overrides] + [f"--{flag}" for flag in ("yaml", "out_dir")
                                                     if getattr(args, flag) is not None]
    if args.overwrite:
        changed.append("--overwrite")
    if changed:
        raise ConfigError(f"--resume continues a run with the config saved in its directory; "
                          f"drop {', '.join(changed)} (only {', '.join('--' + f for f in RESUMABLE_FLAGS)} "
                          f"may change)")
    try:
        config, run = RunDir(args.resume).saved_config()
    except ConfigError as error:
        raise ConfigError(f"--resume {args.resume}: {error}") from None
    yaml_path = Path(str(run["yaml"])) if run.get("yaml") else None
    data_root = args.data_root or Path(str(run.get("data_root") or DEFAULT_DATA_ROOT))
    saved_device = str(run["device"]) if run.get("device") else None
    device = resolve_device(args.device or saved_device)  # the run's own device by default
    # runs started before runs had an id get one for this process only
    run_id = str(run.get("id") or uuid.uuid4().hex)
    return config, RunOptions(yaml_path, data_root, args.resume, device, True, False,
                              args.dist_backend, **_logging(args, run), run_id=run_id)
