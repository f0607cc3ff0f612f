"""Provenance: what produced a run (command line, git state, library versions, host).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from otrobust import __version__


# ---------------------------------------------------------------- provenance
@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(commit, has uncommitted changes) of the git checkout holding this package, if it is one."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)

    try:
        # The package must be tracked by that repository: a venv inside someone's project is not us.
        if git("ls-files", "--error-unmatch", Path(__file__).name).returncode != 0:
            return None, None
        commit = git("rev-parse", "HEAD").stdout.strip() or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def versions() -> dict[str, Any]:
    """Versions of everything that changes a run's numbers, and the git commit of otrobust if any."""
    import numpy
    import safetensors

    commit, dirty = _git_state()
    return {
        "otrobust": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
    }


def processor_name() -> str:
    """The CPU's model name, with " (AMX)" when it has AMX tiles (Linux; else the platform's processor string)."""
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    return name + (" (AMX)" if " amx_bf16" in info else "")


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Versions, git commit (if any), the command line, working folder, time and CPU thread count."""
    return {
        **versions(),
        "argv": list(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_threads": torch.get_num_threads(),
    }


