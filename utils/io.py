"""Atomic writes: a reader (or a crash, or a power loss) never sees a half-written file, and a
write that fails (a full disk) leaves the previous version of the file as it was."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from utils.errors import UserError

TEMPORARY_SUFFIX = ".tmp"  # `.<name>.<random>.tmp` beside the file being written
_UMASK = os.umask(0)
os.umask(_UMASK)
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


class WriteError(UserError):
    """A file could not be written (exit code 1); the previous version of it is intact."""


def _atomic(path: Path, write) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from others
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)  # the rename itself survives a power loss
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):
            raise _write_error(path, error) from None
        raise


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_error(path: Path, error: BaseException) -> BaseException:
    """The error to report for a failed write. torch.save reports a failed write of its own as
    a RuntimeError ('enforce fail at inline_container.cc'), with the OSError in its context."""
    cause = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        if isinstance(error, RuntimeError) and "inline_container" not in str(error):
            return error  # not a write failure: let it surface as it is
        return WriteError(f"writing {path} failed ({error}); the previous version of the file is "
                          f"intact. Check the free space and permissions of {path.parent}")
    if cause.errno in _OUT_OF_SPACE:
        return WriteError(f"no space left on device at {path}; the previous version of the file "
                          f"is intact")
    if cause.errno in _READ_ONLY:
        return WriteError(f"cannot write {path}: {path.parent} is read-only ({cause.strerror})")
    return WriteError(f"cannot write {path}: {cause.strerror or cause}; the previous version of "
                      f"the file is intact")


def write_stream(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """`write(stream)` into a binary stream that becomes the file at `path` (a figure's savefig)."""
    _atomic(path, write)


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda stream: stream.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def save_torch(path: Path, obj: Any) -> None:
    _atomic(path, lambda stream: torch.save(obj, stream))
