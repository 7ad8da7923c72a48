"""Run an entry script in a subprocess on test data: `python tests/launch.py CHECKSUMS.json
main_class_mlp.py --yaml ...`. The JSON maps a module of utils.data to the entries of its
CHECKSUMS table to replace, e.g. {"utils.data.mnist": {"MNIST": {"train-images-idx3-ubyte": "..."}}}."""
import importlib
import json
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    checksum_file, script, *args = sys.argv[1:]
    sys.path.insert(0, str(REPO))
    for module_name, entries in json.loads(Path(checksum_file).read_text()).items():
        table = importlib.import_module(module_name).CHECKSUMS
        for key, value in entries.items():
            if isinstance(value, dict):
                table[key].update(value)
            else:
                table[key] = value
    sys.argv = [script, *args]
    runpy.run_path(str(REPO / script), run_name="__main__")


if __name__ == "__main__":
    main()
