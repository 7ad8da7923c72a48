"""Bad configs and command lines end with one clear message and exit code 2: it names the key
or flag (and the closest valid one), and no traceback reaches the user. Settings the run would
ignore draw a one-line warning. The property tests stop at the training itself (`run` is
replaced), so they check every parse and validation path quickly."""
import contextlib
import io
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ccl.experiment as experiment
import yaml
from ccl.cli import build_parser, parse_command_line
from ccl.config import KEYS, REQUIRED, SECTIONS
from ccl.scripts import BY_CONFIG_FOLDER, MLP

RELEASED = yaml.safe_load((REPO / "yaml/mlp/mnist_ccl.yaml").read_text())
MLP_YAML = str(REPO / "yaml/mlp/mnist_ccl.yaml")
FLAGS = {option for action in build_parser("p", "d")._actions for option in action.option_strings}
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def no_training(monkeypatch):
    """Parse and validate for real; replace the training run by a record of its config."""
    started = []
    monkeypatch.setattr(experiment, "run", lambda script, config, options, world=None: started.append(config) or 0)
    return started


def mlp(*argv: str) -> tuple[int, str]:
    """main_class_mlp.py's exit code and stderr for a command line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = experiment.main(MLP, list(argv))
    return code, err.getvalue()


def yaml_file(tmp_path: Path, document, name="config.yaml") -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return str(path)


def edited(**sections) -> dict:
    """The released mnist_ccl.yaml with some sections' entries changed (None deletes)."""
    document = {section: dict(entries) for section, entries in RELEASED.items()}
    for section, changes in sections.items():
        for name, value in changes.items():
            if value is None:
                document[section].pop(name)
            else:
                document.setdefault(section, {})[name] = value
    return document


# --- command-line errors -----------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--lr-F", "0.5"], "unknown flag --lr-F (did you mean --lr_F?)"),
    (["--epoch", "3"], "unknown flag --epoch (did you mean --epochs?)"),
    (["--learning_rate=0.1"], "unknown flag --learning_rate"),
    (["stray"], "unexpected argument 'stray'"),
    (["--epochs", "two"], "--epochs must be an integer, got 'two'"),
    (["--epochs", "2.5"], "--epochs must be an integer"),
    (["--lr_F", "fast"], "--lr_F must be a number, got 'fast'"),
    (["--lr_F", "nan"], "--lr_F must be a finite number"),
    (["--lr_F", "1e39"], "lr_F must be within float32's range"),  # SGD's float32 step overflows
    (["--loss_scale_C", "3.5e38"], "loss_scale_C must be within float32's range"),
    (["--lr_F"], "argument --lr_F: expected one argument"),
    (["--act_F", "ELU"], "act_F must be one of elu, tanh, relu, leaky_relu, selu, tanh_bn; got 'ELU' "
                         "(did you mean elu?)"),
    (["--lr_F", "-1"], "lr_F must be >= 0"),
    (["--batchsize", "0"], "batchsize must be positive"),
    (["--epochs", "-3"], "epochs must be positive"),
    (["--mmt_F", "1"], "mmt_F must be >= 0 and < 1"),
    (["--mmt_B", "1.5"], "mmt_B must be >= 0 and < 1"),
    (["--grad_clip_B", "-0.1"], "grad_clip_B must be >= 0"),
    (["--flood_threshold", "0"], "flood_threshold must be > 0 and <= 1"),
    (["--flood_threshold", "1.5"], "flood_threshold must be > 0 and <= 1"),
    (["--seed", str(2**32)], "seed must be >= 0 and <= 4294967295"),
    (["--mode", "test"], "mode must be one of train"),
    (["--dataset", "MNIST_CNN"], "main_class_mlp.py takes dataset MNIST or FashionMNIST or CIFAR10 or "
                                 "CIFAR100"),
    (["--architecture", "cnn"], "main_class_mlp.py takes architecture simple_linear"),
    (["--task", "autoencoder"], "main_class_mlp.py takes task classification"),
    (["--dataset", "CIFAR10"], "num_chn is 1 but the images of dataset CIFAR10 have 3 channel(s)"),
    (["--num_classes", "100"], "num_classes is 100 but dataset MNIST has 10 classes"),
    (["--warmup", "10"], "main_class_mlp.py trains without warm-up or cosine schedule (as released): "
                         "set warmup: 0 and tmax: 0 (got warmup 10, tmax 0)"),
    (["--tmax", "100"], "set warmup: 0 and tmax: 0 (got warmup 0, tmax 100)"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--device", "meta"], "only cpu and cuda are supported"),
])
def test_bad_command_line_is_exit_2_naming_the_problem(no_training, argv, message):
    code, err = mlp("--yaml", MLP_YAML, *argv)
    assert code == 2 and message in err, err
    assert err.startswith("main_class_mlp.py: error: ") and "Traceback" not in err
    assert not no_training


def test_cuda_that_is_not_there_is_exit_2(no_training, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code, err = mlp("--yaml", MLP_YAML, "--device", "cuda")
    assert code == 2 and "CUDA is not available here; use --device cpu" in err


def test_yaml_is_required(no_training):
    code, err = mlp("--epochs", "3")
    assert code == 2 and "--yaml is required" in err


def test_good_overrides_reach_the_config(no_training):
    assert mlp("--yaml", MLP_YAML, "--lr_F", "0.25", "--mmt_F=0.9", "--seed", "7",
               "--num_classes", "none")[0] == 0
    config = no_training[0]
    assert (config.lr_F, config.mmt_F, config.seed, config.num_classes) == (0.25, 0.9, 7, None)


# --- config-file errors ------------------------------------------------------------------

@pytest.mark.parametrize("document, message", [
    (edited(training={"lr_FF": 1.0}), "unknown key 'lr_FF' in section training (did you mean lr_F?)"),
    ({**edited(), "trainig": {}}, "unknown section 'trainig' (did you mean training?)"),
    (edited(method={"lr_F": 1.0}, training={"lr_F": None}),
     "key lr_F belongs in section training, not method"),
    (edited(training={"epochs": None}), "key epochs is missing; add it to section training"),
    (edited(training={"epochs": "ten"}), "epochs must be an integer, got 'ten'"),
    (edited(training={"GradC": True}), "GradC must be an integer, got True"),
    (edited(training={"lr_F": [1, 2]}), "lr_F must be a number, got [1, 2]"),
    (edited(training={"lr_F": "1e400"}), "lr_F must be a finite number"),
    (edited(training={"wd_B": 1e39}), "wd_B must be within float32's range"),
    (edited(method={"act_B": 3}), "act_B must be a string, got 3"),
    (edited(training={"mmt_B": 1.0}), "mmt_B must be >= 0 and < 1"),
    (edited(training={"filter_target": -0.2}), "filter_target must be >= 0"),
    ({**edited(), "training": None}, "section training must be a mapping"),
    (["method", "dataset"], "must hold the sections method, dataset, training"),
    ("", "must hold the sections"),
    ("training: {lr_F: [}", "is not valid YAML"),
])
def test_bad_config_file_is_exit_2_naming_the_key(no_training, tmp_path, document, message):
    path = yaml_file(tmp_path, document)
    code, err = mlp("--yaml", path)
    assert code == 2 and message in err and path in err, err


def test_missing_unreadable_and_directory_config_files(no_training, tmp_path):
    code, err = mlp("--yaml", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml does not exist" in err and "yaml/mlp/mnist_ccl.yaml" in err
    code, err = mlp("--yaml", str(tmp_path))
    assert code == 2 and "is not a file" in err
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, err = mlp("--yaml", str(binary))
    assert code == 2 and "cannot be read" in err


def test_a_command_line_override_fixes_a_file_value(no_training, tmp_path):
    path = yaml_file(tmp_path, edited(training={"mmt_F": 1.0}))
    assert mlp("--yaml", path, "--mmt_F", "0.5")[0] == 0


# --- warnings for settings the run ignores -----------------------------------------------

@pytest.mark.parametrize("argv, warning", [
    (["--loss_scale_ssl", "0.3"], "loss_scale_ssl 0.3 is ignored: main_class_mlp.py does not use it"),
    (["--loss_scale_D", "2"], "loss_scale_D 2.0 is ignored"),
    (["--augment_validation", "1"], "augment_validation 1 is ignored: main_class_mlp.py does not use it"),
    (["--augment", "0"], "augment 0 is ignored: main_class_mlp.py does not use it"),
    (["--fused_pair_loss", "1"], "fused_pair_loss 1 is ignored: main_class_mlp.py does not use it"),
    (["--task_transform", "rot90"], "task_transform 'rot90' is ignored: it applies to the autoencoder"),
    (["--method", "BP", "--filter_target", "0.2"], "filter_target is ignored with method BP"),
    (["--method", "BP", "--fused_pair_loss", "1"],  # said once: the script never reads it
     "fused_pair_loss 1 is ignored: main_class_mlp.py does not use it"),
    (["--flood_threshold", "0.2"], "flood_threshold is ignored while filter_target is 0"),
    (["--warmup_counter", "batch_in_epoch"], "warmup_counter is ignored while warmup is 0"),
])
def test_ignored_settings_draw_a_warning_and_the_run_goes_on(no_training, argv, warning):
    code, err = mlp("--yaml", MLP_YAML, *argv)
    assert code == 0 and f"main_class_mlp.py: warning: {warning}" in err, err
    assert len(err.splitlines()) == 1


def test_eta_min_above_a_trained_learning_rate_draws_a_warning(no_training):
    scheduled = replace(MLP, check=lambda config: None)  # the MLP forbids tmax
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = experiment.main(scheduled, ["--yaml", MLP_YAML, "--method", "CCL", "--tmax", "10",
                                           "--lr_B", "0", "--eta_min", "0.01"])
    assert code == 0 and "eta_min 0.01 is above lr_B 0: the cosine schedule raises" in err.getvalue()


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO)) for p in (REPO / "yaml").glob("*/*.yaml")))
def test_every_config_in_yaml_runs_with_no_warning(no_training, path):
    """The warnings compare with the value a key takes when left out, so a released config
    (whose keys are all set, many to that value) draws none."""
    script = BY_CONFIG_FOLDER[Path(path).parent.name]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = experiment.main(script, ["--yaml", str(REPO / path)])
    assert (code, err.getvalue()) == (0, "")


def test_every_ignored_key_has_a_value_it_takes_when_left_out():
    for script in BY_CONFIG_FOLDER.values():
        for name in script.ignored:
            assert script.default(name) is not REQUIRED, (script.prog, name)


def test_a_key_given_twice_is_an_error_naming_both_lines(no_training, tmp_path):
    text = (REPO / "yaml/mlp/mnist_ccl.yaml").read_text().replace("  lr_F: 1\n", "  lr_F: 1\n  lr_F: 7\n")
    path = yaml_file(tmp_path, text)
    line = text.splitlines().index("  lr_F: 7") + 1
    assert mlp("--yaml", path) == (2, f"main_class_mlp.py: error: {path}: key 'lr_F' appears twice, "
                                      f"on lines {line - 1} and {line}; keep one\n")
    assert not no_training


def test_a_config_from_outside_yaml_still_runs_under_runs(no_training, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    outside = yaml_file(tmp_path, (REPO / "yaml/mlp/mnist_ccl.yaml").read_text(), "x.yaml")
    config, options = parse_command_line(["--yaml", f"{tmp_path.name}/../{tmp_path.name}/x.yaml"],
                                         "main_class_mlp.py", "", {"task": "classification"})
    assert options.out_dir == Path("runs") / tmp_path.name / "x" / "seed2023"
    config, options = parse_command_line(["--yaml", outside], "main_class_mlp.py", "",
                                         {"task": "classification"})
    assert options.out_dir.parts[0] == "runs" and ".." not in options.out_dir.parts


# --- properties: any bad value or flag is exit 2 naming it; nothing else escapes ---------

def _out_of_bounds(key):
    """Numbers just past each of the key's bounds, and far past them."""
    if key.type is int:
        low = [st.integers(max_value=key.minimum - 1)] if key.minimum is not None else []
        high = [st.integers(min_value=key.maximum + 1)] if key.maximum is not None else []
    else:
        finite = {"allow_nan": False, "allow_infinity": False}
        low = ([st.floats(max_value=key.minimum, exclude_max=True, **finite)] if key.minimum is not None
               else [st.floats(max_value=key.above, **finite)] if key.above is not None else [])
        high = ([st.floats(min_value=key.maximum, exclude_min=True, **finite)] if key.maximum is not None
                else [st.floats(min_value=key.below, **finite)] if key.below is not None else [])
    return st.one_of(*low, *high).map(str)


def _bad_text(name):
    key = KEYS[name]
    if key.choices:
        return st.text(min_size=1).filter(lambda t: t not in map(str, key.choices))
    if key.type is int:
        wrong = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(lambda v: str(v + 0.5)),
                          st.text(alphabet="abcxyz.,% ", min_size=1))
    elif key.type is float:
        wrong = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e999", "one", "1,5", ""]),
                          st.text(alphabet="abcxyz%", min_size=1))
    else:
        wrong = st.nothing()
    bounded = any(b is not None for b in (key.minimum, key.maximum, key.above, key.below))
    return st.one_of(wrong, _out_of_bounds(key)) if bounded else wrong


CHECKED_KEYS = sorted(name for name, key in KEYS.items()
                      if key.choices or key.type in (int, float))
ARG_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@PROPERTY
@given(data=st.data())
def test_every_bad_value_is_exit_2_naming_the_key(no_training, data):
    name = data.draw(st.sampled_from(CHECKED_KEYS))
    text = data.draw(_bad_text(name))
    if text.lower() in ("none", "null") and KEYS[name].optional:
        return  # clears an optional key: a good value
    code, err = mlp("--yaml", MLP_YAML, f"--{name}={text}")
    assert code == 2 and name in err, (name, text, err)


@PROPERTY
@given(flag=st.from_regex(r"--?[A-Za-z_][A-Za-z0-9_-]{0,15}", fullmatch=True).filter(
    lambda f: f not in FLAGS and not f.startswith("-h")))  # -hX: argparse reads -h with a value
def test_every_unknown_flag_is_exit_2_naming_it(no_training, flag):
    code, err = mlp("--yaml", MLP_YAML, flag, "1")
    assert code == 2 and flag in err, (flag, err)


@PROPERTY
@given(name=st.sampled_from(sorted(KEYS)), text=ARG_TEXT, joined=st.booleans())
def test_any_value_is_accepted_or_rejected_naming_the_key(no_training, name, text, joined):
    argv = [f"--{name}={text}"] if joined else [f"--{name}", text]
    code, err = mlp("--yaml", MLP_YAML, *argv)
    assert code in (0, 2), err
    if code == 2:
        assert name in err, (argv, err)


YAML_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(),
                        ARG_TEXT, st.lists(st.integers(), max_size=2))


@PROPERTY
@given(section=st.sampled_from([*SECTIONS, "run", "Training"]),
       name=st.one_of(st.sampled_from(sorted(KEYS)), ARG_TEXT), value=YAML_VALUES,
       delete=st.sampled_from(sorted(RELEASED["training"])) | st.none())
def test_any_edit_of_a_config_file_is_accepted_or_rejected_naming_it(no_training, tmp_path, section,
                                                                      name, value, delete):
    document = edited(training={delete: None} if delete else {})
    document.setdefault(section, {})[name] = value
    path = yaml_file(tmp_path, document, "edited.yaml")
    code, err = mlp("--yaml", path)
    assert code in (0, 2), err
    if code == 2:
        named = {str(name), section, delete} | {key for key in KEYS if key in err}
        assert any(word and word in err for word in named), err


@pytest.mark.slow
def test_a_real_process_prints_no_traceback_for_a_bad_flag():
    done = subprocess.run([sys.executable, "main_class_mlp.py", "--yaml", MLP_YAML, "--lr-F", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == "main_class_mlp.py: error: unknown flag --lr-F (did you mean --lr_F?); " \
                          "see --help for every flag\n"


def test_the_allowed_values_are_the_registries_names():
    """One source: registering a rule, architecture, activation, dataset or task transform makes
    it a valid value of its key (config files, flags, --help)."""
    from ccl.rules import RULES
    from models import ARCHITECTURES
    from models.layers import ACTIVATIONS
    from utils.data.datasets import SOURCE_OF
    from utils.data.task_transforms import TASK_TRANSFORMS
    assert KEYS["method"].choices == tuple(RULES)
    assert KEYS["architecture"].choices == tuple(ARCHITECTURES)
    assert KEYS["act_F"].choices == KEYS["act_B"].choices == tuple(ACTIVATIONS)
    assert KEYS["dataset"].choices == tuple(SOURCE_OF)
    assert KEYS["task_transform"].choices == ("none", *TASK_TRANSFORMS)


def test_library_code_never_imports_an_entry_script():
    """The entry scripts are the top of the code: ccl/, models/ and utils/ use the declarations
    in ccl/scripts.py, never main_*.py (by import or importlib)."""
    for folder in ("ccl", "models", "utils"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for name in ("main_class_mlp", "main_class_cnn", "main_ae"):
                assert not re.search(rf"(import\s+{name}\b|from\s+{name}\s+import|import_module\([^)]*{name})",
                                     text), (path, name)
