"""The README stays in step with the code: every config key and run option is documented, and
the commands it gives name files that exist."""
import re

import pytest
from conftest import REPO

from ccl.cli import build_parser
from ccl.config import KEYS

README = (REPO / "README.md").read_text()
DOCUMENTED_FLAGS = set(re.findall(r"`(--[A-Za-z_]+)", README))


@pytest.mark.parametrize("name", sorted(KEYS))
def test_every_config_key_is_documented(name):
    assert f"--{name}" in DOCUMENTED_FLAGS


def test_every_run_option_is_documented():
    flags = {flag for action in build_parser("main_class_mlp.py", "")._actions
             for flag in action.option_strings if flag.startswith("--") and flag != "--help"}
    missing = flags - DOCUMENTED_FLAGS
    assert not missing, f"README.md does not document {sorted(missing)}"


def test_the_commands_name_existing_configs_and_scripts():
    for path in set(re.findall(r"(?:yaml/[a-z_]+/[a-z0-9_]+\.yaml)", README)):
        assert (REPO / path).is_file(), path
    for script in set(re.findall(r"python ([a-z_]+\.py)", README)):
        assert (REPO / script).is_file(), script


def test_the_quickstart_commands_come_first():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert first_block == [
        "pip install -r requirements.txt && python prepare_data.py MNIST && "
        "python main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --epochs 2",
        "pip install -r requirements-dev.txt && python -m pytest"]
    assert "pytest" in (REPO / ".ci/run").read_text()
