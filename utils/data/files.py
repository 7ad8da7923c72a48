"""Reading dataset files with integrity checks: a missing, truncated or corrupted file is a
DataError that names the file, the checksum expected and found, and the fix."""
from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

from utils.errors import DataError

PREPARE_COMMAND = "python prepare_data.py {dataset} --data_root {root}"


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def prepare_hint(dataset: str, root: Path) -> str:
    return PREPARE_COMMAND.format(dataset=dataset, root=root)


def check_data_root(root: Path) -> None:
    """A DataError when `root`, or the nearest of its parents that exists, is not a directory:
    every file under it would read as missing, and prepare_data.py could not create it."""
    root = Path(root)
    existing = next((path for path in (root, *root.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "is" if existing == root else f"is under {existing}, which is"
        raise DataError(f"--data_root {root} {what} not a directory.",
                        "Pass the folder that holds the datasets (or is to hold them), e.g. "
                        "--data_root data.")


def read_checked(path: Path, expected_md5: str, dataset: str, root: Path,
                 allow_gzip: bool = False, archive: str | None = None) -> bytes:
    """The bytes of `path` (or of `path.gz`, decompressed, when `allow_gzip`), whose md5 must
    be `expected_md5`. `archive`: the official archive the file comes in, named by the error."""
    candidates = [path] + ([path.with_name(path.name + ".gz")] if allow_gzip else [])
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        manual = (f"download {archive} and unpack it into {root}/" if archive
                  else "place the official file there")
        raise DataError(f"{dataset}: file {path} is missing.",
                        f"Run `{prepare_hint(dataset, root)}`, or {manual}.")
    try:
        data = found.read_bytes()
    except OSError as error:
        raise DataError(f"{dataset}: {found} cannot be read ({error}).",
                        f"Check its permissions, or delete it and run "
                        f"`{prepare_hint(dataset, root)}`.") from None
    if found.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:  # bad header, cut short, bad deflate stream
            raise DataError(f"{dataset}: {found} is not a valid gzip file ({error}).",
                            f"Delete it and run `{prepare_hint(dataset, root)}`.") from None
    actual = md5_of(data)
    if actual != expected_md5:
        raise DataError(f"{dataset}: {found} is corrupted or not the official file: md5 "
                        f"{actual}, expected {expected_md5} (of the uncompressed data).",
                        f"Delete it and run `{prepare_hint(dataset, root)}`.")
    return data
