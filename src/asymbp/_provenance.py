"""Where a result came from: package version, git commit, host, library versions."""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree asymbp runs from (None when not a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here, capture_output=True, text=True, timeout=5,
    )
    if dirty.returncode == 0 and dirty.stdout.strip():
        commit += "-dirty"
    return commit


def provenance() -> dict:
    """Version, commit and host facts stored with every result."""
    import torch

    from . import __version__

    return {
        "version": __version__,
        "commit": git_commit(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
