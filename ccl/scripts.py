"""What each entry script trains and how: the declarations that `ccl.experiment.main` runs.

    main_class_mlp.py   MLP           the paper's MLPs (Table 1)
    main_class_cnn.py   CNN           the paper's CNNs (Table 3 and the other CNN configs)
    main_ae.py          AUTOENCODER   the STL-10 convolutional autoencoder

A config's folder under yaml/ names the script that trains it (`BY_CONFIG_FOLDER`), and a run
directory's config.yaml the script that trained it (`rebuild`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ccl.cli import DEFAULT_DATA_ROOT
from ccl.config import Config
from ccl.distributed import ONE_PROCESS, World
from ccl.experiment import Experiment, Script, build
from ccl.losses import cnn_pair_loss, fused_cnn_pair_loss, mlp_pair_loss
from ccl.objectives import Classification, Reconstruction, flood_threshold
from ccl.plots import save_reconstructions
from ccl.rules import RULES, rule_names
from ccl.run_dir import CONFIG, RunDir, RunDirError
from utils.data.recipes import CNN_TRANSFORMS, ae_data, cnn_data, mlp_data
from utils.data.task_transforms import TASK_TRANSFORMS
from utils.errors import ConfigError


def mlp_objective(config: Config, num_classes: int, world: World = ONE_PROCESS) -> Classification:
    # its pair loss is a mean over samples: nothing of the global batch to gather
    return Classification(num_classes, partial(mlp_pair_loss, loss_scale_C=config.loss_scale_C),
                          flood_threshold(config))


def no_schedules(config: Config) -> None:
    if config.warmup or config.tmax:
        raise ConfigError(f"{MLP.prog} trains without warm-up or cosine schedule (as released): "
                          f"set warmup: 0 and tmax: 0 (got warmup {config.warmup}, tmax {config.tmax})")


MLP = Script(
    prog="main_class_mlp.py",
    description=f"Train an MLP on MNIST, FashionMNIST, CIFAR-10 or CIFAR-100 with one of the rules "
                f"{rule_names()}.",
    task="classification",
    architectures=("simple_linear",),
    datasets=("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"),
    make_data=mlp_data,
    make_objective=mlp_objective,
    defaults={"task_transform": "none"},
    check=no_schedules,
    # no decorrelation or normalised terms, no augmentation, a pair loss with nothing to fuse
    ignored=("loss_scale_ssl", "loss_scale_D", "augment", "augment_validation", "fused_pair_loss"),
)


def cnn_objective(config: Config, num_classes: int, world: World = ONE_PROCESS) -> Classification:
    scales = {"loss_scale_C": config.loss_scale_C, "loss_scale_ssl": config.loss_scale_ssl}
    if config.fused_pair_loss:  # one process only (World.check)
        pair_loss = partial(fused_cnn_pair_loss, **scales)
    else:  # the Gram term of the samples gathers the global batch's rows
        pair_loss = partial(cnn_pair_loss, **scales, gather_rows=world.gather_rows if world.size > 1 else None)
    return Classification(num_classes, pair_loss, flood_threshold(config))


CONV_RULES = tuple(name for name, rule in RULES.items() if not rule.linear_only)

CNN = Script(
    prog="main_class_cnn.py",
    description=f"Train a CNN on CIFAR-10, CIFAR-100, STL-10 (32x32), MNIST or FashionMNIST (32x32) "
                f"with one of the rules {rule_names(CONV_RULES)}.",
    task="classification",
    architectures=("cnn", "cnn_pool"),
    datasets=tuple(CNN_TRANSFORMS),
    make_data=cnn_data,
    make_objective=cnn_objective,
    methods=CONV_RULES,
    defaults={"task_transform": "none"},
    ignored=("loss_scale_D", "weight_init", "feedback_init_range"),  # the MLP's init
)


def ae_objective(config: Config, num_classes: int, world: World = ONE_PROCESS) -> Reconstruction:
    # its pair losses are means over samples: nothing of the global batch to gather
    return Reconstruction(config.loss_scale_C, config.loss_scale_D)


def ae_check(config: Config) -> None:
    if config.task_transform not in TASK_TRANSFORMS:
        raise ConfigError(f"{AUTOENCODER.prog} takes task_transform {', '.join(TASK_TRANSFORMS)}; "
                          f"got {config.task_transform!r}")
    if config.bias_init != "zero":
        raise ConfigError(f"{AUTOENCODER.prog} initialises biases as released whatever bias_init "
                          f"says (forward biases zero, feedback biases PyTorch's default): set "
                          f"bias_init: zero (got {config.bias_init!r})")


AE_RULES = ("BP", "CCL")  # the baselines are classification rules

AUTOENCODER = Script(
    prog="main_ae.py",
    description=f"Train the STL-10 convolutional autoencoder with {rule_names(AE_RULES)}.",
    task="autoencoder",
    architectures=("cnn_pool_autoencoder", "cnn_stride_autoencoder"),
    datasets=("STL10",),
    make_data=ae_data,
    make_objective=ae_objective,
    methods=AE_RULES,
    # the released script has no flooding: a config without filter_target means it off
    defaults={"task_transform": "same", "filter_target": 0.0},
    check=ae_check,
    report=save_reconstructions,
    # no decorrelation terms, no flooding; fused_pair_loss is the classification CNN's
    ignored=("loss_scale_ssl", "filter_target", "fused_pair_loss", "weight_init", "feedback_init_range"),
)

BY_CONFIG_FOLDER = {"mlp": MLP, "cnn": CNN, "cnn_ae": AUTOENCODER}
BY_PROG = {script.prog: script for script in BY_CONFIG_FOLDER.values()}


def rebuild(run_dir: RunDir, data_root: Path | None, device: str, best: bool = True) -> Experiment:
    """The experiment of a run directory, on `device`, its model holding the best epoch's
    weights (`best=False`: the initial ones, as the run drew them from its seed): the script
    and config that config.yaml names, the data from `data_root` (default: the run's own)."""
    config, run = run_dir.saved_config()
    script = BY_PROG.get(run.get("script"))
    if script is None:
        raise RunDirError(f"{run_dir / CONFIG} names the script {run.get('script')!r}, which is none "
                          f"of {', '.join(BY_PROG)}")
    root = Path(data_root or run.get("data_root") or DEFAULT_DATA_ROOT)
    experiment = build(script, config, device, data_root=root)
    if best:
        run_dir.load_best_into(experiment.model)
    return experiment
