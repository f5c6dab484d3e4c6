"""What produced a result: code version and commit, library versions, hosts and the job's shape.

Recorded as ``provenance`` in every step's model.pt (training) and metrics.json (training's and
the evaluation's own), so a number in a table can be traced to the code, the machine and the
settings that made it.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import lgkd_core

_PACKAGE_DIR = Path(lgkd_core.__file__).resolve().parent


def git_state(path: Path = _PACKAGE_DIR) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout holding ``path``; empty when the code
    is not in a git work tree (an installed wheel) or git is missing."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}


def hosts() -> list[str]:
    """Host name of every rank (rank order; one entry when not distributed). A collective: call
    it on every rank."""
    name = socket.gethostname()
    if not (dist.is_available() and dist.is_initialized()):
        return [name]
    names: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(names, name)
    return [str(n) for n in names]


def collect(**job: Any) -> dict[str, Any]:
    """The provenance record: versions, commit, this host, and the ``job`` fields given (world
    size, threads per rank, global batch, wall time, resolved configuration; ``hosts`` from
    :func:`hosts` for a distributed job). Local: safe to call on one rank."""
    cuda = torch.version.cuda
    record: dict[str, Any] = {
        "lgkd_core": lgkd_core.__version__,
        **git_state(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion: the safe loader refuses the class
        "cuda": cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpus": (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available()
            else []
        ),
        "hosts": [socket.gethostname()],
        "platform": platform.platform(),
        "command": sys.argv[:],
    }
    record.update(job)
    return record
