"""Start a training job with one process per GPU (or per CPU worker): what the train rule runs.

``python -m lgkd_core launch --nproc-per-node N [--nnodes M] --threads T -- train ...``

* one process on one node: the command runs directly (no rendezvous to pay for);
* several processes on one node: ``torchrun --standalone --nproc-per-node N``;
* several nodes (inside a SLURM allocation): ``srun`` starts one ``torchrun`` per node, which
  rendezvous on the allocation's first node. Every count is given explicitly because the SLURM
  executor plugin strips ``SLURM_*`` variables from the job step.

``OMP_NUM_THREADS`` is set to the job's threads divided by the processes per node, less each
process's DataLoader workers (they are processes of their own, a core each), at least 1:
Snakemake exports the job's full thread count, and every rank using all of it oversubscribes
the cores.
The SLURM job id, the host and the command are logged first so every log names its job; then
the launcher replaces itself with the command (``exec``), so signals and the exit status are
the command's own.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("lgkd_core.launch")

RDZV_PORT = 29400


def threads_per_process(threads: int, nproc_per_node: int, workers: int = 0) -> int:
    """Compute threads of each process: its share of the job's ``threads``, less its loader
    ``workers``, at least 1."""
    return max(1, threads // max(1, nproc_per_node) - max(0, workers))


def loader_workers(argv: list[str]) -> int:
    """The ``--workers N`` of a train command line (0 when absent)."""
    for i, arg in enumerate(argv):
        if arg == "--workers" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--workers="):
            return int(arg.split("=", 1)[1])
    return 0


def job_nodelist(job_id: str | None = None) -> str | None:
    """The node list of the SLURM job: ``SLURM_JOB_NODELIST``, or, where the executor plugin
    dropped it from the job step's environment, ``NodeList=`` of ``scontrol show job``."""
    if os.environ.get("SLURM_JOB_NODELIST"):
        return os.environ["SLURM_JOB_NODELIST"]
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    for field in out.split():
        if field.startswith("NodeList=") and field != "NodeList=(null)":
            return field.split("=", 1)[1]
    return None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``scontrol show hostnames``)."""
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
    )
    return out.stdout.split()[0]


def launch_command(
    argv: list[str],
    nproc_per_node: int,
    nnodes: int = 1,
    python: str = sys.executable,
    head_host: str | None = None,
    job_id: str | None = None,
) -> list[str]:
    """The command line that runs ``python -m lgkd_core <argv>`` on every process."""
    module = ["-m", "lgkd_core", *argv]
    if nnodes == 1 and nproc_per_node == 1:
        return [python, *module]
    torchrun = [python, "-m", "torch.distributed.run"]
    if nnodes == 1:
        return [*torchrun, "--standalone", f"--nproc-per-node={nproc_per_node}", *module]
    if not head_host:
        raise ValueError(
            f"nodes={nnodes} needs a SLURM allocation of {nnodes} nodes (neither "
            "SLURM_JOB_NODELIST nor SLURM_JOB_ID is set); run through profiles/slurm or set "
            "nodes: 1"
        )
    srun = [
        "srun",
        f"--nodes={nnodes}",
        f"--ntasks={nnodes}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
    ]
    return [
        *srun,
        *torchrun,
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={head_host}:{RDZV_PORT}",
        f"--rdzv-id={job_id or 'lgkd'}",
        *module,
    ]


def open_attempt_log(log: Path) -> Path:
    """Send this process's stdout and stderr to a new ``STEM.N.SUFFIX`` beside ``log`` (the first
    free N) and point ``log`` at it with a relative symbolic link.

    Snakemake deletes a job's declared log before every attempt; here it deletes only the link,
    so the log of every earlier attempt (a time limit, a lost node, a kill) stays beside it.
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        attempt = log.with_name(f"{log.stem}.{n}{log.suffix}")
        try:
            fd = os.open(attempt, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            n += 1
    if log.is_symlink() or log.exists():
        log.unlink()
    log.symlink_to(attempt.name)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return attempt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc-per-node", type=int, default=1, help="GPUs (or CPU processes)")
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of the whole job")
    parser.add_argument(
        "--log",
        type=Path,
        help="write the job's output to LOG.N (N: the attempt) and link LOG to it",
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- train ARGS...")


def run(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise ValueError("launch: give the command after --, e.g. -- train --dataset voc ...")
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise ValueError("launch: --nproc-per-node and --nnodes must be at least 1")
    attempt = open_attempt_log(args.log) if args.log else None
    job_id = os.environ.get("SLURM_JOB_ID")
    head = None
    if args.nnodes > 1 and (nodelist := job_nodelist(job_id)):
        head = first_host(nodelist)
    cmd = launch_command(argv, args.nproc_per_node, args.nnodes, head_host=head, job_id=job_id)
    env = dict(os.environ)
    if args.threads:
        per_process = threads_per_process(args.threads, args.nproc_per_node, loader_workers(argv))
        env["OMP_NUM_THREADS"] = str(per_process)
    log.info(
        "%sSLURM job %s on %s, %d process(es) x %d node(s), OMP_NUM_THREADS=%s: %s",
        f"{attempt.name}: " if attempt else "",
        job_id or "none",
        socket.gethostname(),
        args.nproc_per_node,
        args.nnodes,
        env.get("OMP_NUM_THREADS", "unset"),
        shlex.join(cmd),
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the command (same process): a signal for the job (SIGTERM before a time limit)
    # reaches the trainer or torchrun directly, and the job's exit status is the command's.
    os.execvpe(cmd[0], cmd, env)
