"""What produced a result: library versions, the code's git commit, the device."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """HEAD of the repository this code runs from, with '+dirty' for uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def provenance(device: torch.device) -> dict:
    import torchvision  # noqa: PLC0415  (only its version is needed)
    return {"device": str(device), "device_name": device_name(device),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__, "numpy": np.__version__},
            "git_commit": git_commit()}
