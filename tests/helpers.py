"""Helpers shared by the test modules: the workflow runner and its dry-run parser, weight and
file comparisons, a free loopback port, and killing a job on its own progress.

Fixtures live in conftest.py; these are plain functions, imported as ``from helpers import ...``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# One thread per training subprocess: two of them share CI's two cores without oversubscribing.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# -- the workflow -----------------------------------------------------------------------------
def snakemake(
    args: list[str], workdir: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """``snakemake --snakefile <repo>/Snakefile [--directory workdir] ARGS``, output captured."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        cmd + args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def planned_jobs(out: str) -> list[dict]:
    """Jobs of a dry run (``-n [-p]``): rule, input, output, wildcards and the job's text."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        if head := re.match(r"(?:local)?rule (\w+):", block):
            job = {"rule": head[1], "block": block}
            for key in ("input", "output", "wildcards"):
                m = re.search(rf"^\s+{key}: (.*)$", block, re.M)
                job[key] = m[1].split(", ") if m else []
            jobs.append(job)
    return jobs


def counts(jobs: list[dict]) -> dict[str, int]:
    """Number of planned jobs per rule."""
    out: dict[str, int] = {}
    for j in jobs:
        out[j["rule"]] = out.get(j["rule"], 0) + 1
    return out


# -- files and weights ------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """The same keys and, bit for bit, the same tensors."""
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- killing a job on its own progress --------------------------------------------------------
def checkpoints(state: Path) -> list[Path]:
    """The epoch/iteration checkpoints of a step, oldest first."""
    return sorted(state.glob("ckpt-*.pt")) if state.is_dir() else []


def kill_when(
    cmd: list[str],
    ready: Callable[[], bool],
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds (polled, no fixed sleep); fail if it
    ends first. ``timeout`` only bounds a job that hangs: the trigger is the job's own progress."""
    proc = subprocess.Popen(
        cmd, env=ENV if env is None else env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the job ended before it was killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def kill_after_checkpoints(
    cmd: list[str],
    state: Path,
    count: int = 1,
    ignore: frozenset[str] = frozenset(),
    env: dict[str, str] | None = None,
) -> None:
    """SIGKILL ``cmd`` once ``count`` checkpoints not named in ``ignore`` exist under ``state``."""
    kill_when(
        cmd, lambda: len([p for p in checkpoints(state) if p.name not in ignore]) >= count, env=env
    )


# -- tiny training runs -------------------------------------------------------------------------
# The TrainConfig fields of every in-process test run: a quarter-width ResNet-18 on 64-pixel
# crops, on the CPU, in the main process; modules add their epochs, batch, lr and seed.
TINY_TRAIN = {
    "backbone": "resnet18_w0.25",
    "head_channels": 32,
    "crop_size": 64,
    "output_stride": 8,
    "workers": 0,
    "device": "cpu",
    "log_every": 1000,
}


# -- a loopback HTTP server ---------------------------------------------------------------------
class LoopbackServer:
    """``http.server`` on 127.0.0.1 (a free port) in a thread; subclasses answer in
    :meth:`respond`. Every request's path and Range header are recorded in ``requests``."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("Range")))
                outer.respond(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def respond(self, handler) -> None:  # handler: a BaseHTTPRequestHandler
        handler.send_error(404)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
