"""A throw-away single-node SLURM cluster for the live tests.

`ensure_slurm_installed()` installs Debian's `slurm-wlm` and `munge` when the daemons are missing
(root and apt-get required). `SlurmCluster` writes `/etc/slurm/slurm.conf` (the executor plugin
drops `SLURM_CONF` before its nested `srun`, so the default path is the only one that works),
starts `munged`, `slurmctld` and `slurmd` in the foreground as child processes, waits for the node
to be idle, and on exit cancels the jobs, stops exactly the daemons it started and restores any
previous `slurm.conf`. Anything that prevents a cluster raises `SlurmUnavailable` with the reason,
which the tests turn into a visible skip.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET_DIR = Path("/run/munge")
APT_PACKAGES = ("slurm-wlm", "munge")
REQUIRED_BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scancel")
PARTITION = "debug"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started on this machine; the message says why."""


def _missing_binaries() -> list[str]:
    return [b for b in REQUIRED_BINARIES if shutil.which(b) is None]


def _apt_install(timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)


def ensure_slurm_installed(timeout_s: float = 900.0) -> float:
    """Install slurm-wlm and munge with apt-get if `slurmctld` & co. are missing.

    Returns the seconds spent installing (0.0 when already installed). Raises `SlurmUnavailable`
    when not root, without apt-get, or when the install fails.
    """
    if not _missing_binaries():
        return 0.0
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"SLURM binaries {_missing_binaries()} are missing and installing them needs root "
            "(run the tests as root or `apt-get install slurm-wlm munge` first)"
        )
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            f"SLURM binaries {_missing_binaries()} are missing and there is no apt-get to "
            "install slurm-wlm and munge"
        )
    start = time.monotonic()
    try:
        proc = _apt_install(timeout_s)
        if proc.returncode != 0:
            # Fresh containers often ship without package lists: refresh once and retry.
            upd = subprocess.run(
                ["apt-get", "update", "-q"], capture_output=True, text=True, timeout=timeout_s
            )
            if upd.returncode != 0:
                raise SlurmUnavailable(f"`apt-get update` failed: {upd.stderr.strip()[-500:]}")
            proc = _apt_install(timeout_s)
    except subprocess.TimeoutExpired as err:
        raise SlurmUnavailable(
            f"installing {APT_PACKAGES} timed out after {timeout_s:.0f} s"
        ) from err
    if proc.returncode != 0:
        raise SlurmUnavailable(
            f"`apt-get install {' '.join(APT_PACKAGES)}` failed: {proc.stderr.strip()[-500:]}"
        )
    if _missing_binaries():
        raise SlurmUnavailable(f"after apt-get install, still missing: {_missing_binaries()}")
    return time.monotonic() - start


def _short_hostname() -> str:
    return socket.gethostname().split(".")[0]


def _real_memory_mb() -> int:
    """Configured node memory: 90 % of MemTotal, so slurmd never sees less than configured."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


def slurm_conf_text(state_dir: Path, host: str, cpus: int, mem_mb: int) -> str:
    """The slurm.conf of a one-node cluster without accounting or cgroups."""
    return "\n".join(
        [
            "# Written by tests/slurm_cluster.py for the live SLURM tests; restored on exit.",
            "ClusterName=lgkdtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={state_dir / 'ctld'}",
            f"SlurmdSpoolDir={state_dir / 'spool'}",
            f"SlurmctldPidFile={state_dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={state_dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={state_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={state_dir / 'slurmd.log'}",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=300",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _run(cmd: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _controller_answers() -> bool:
    """True when some slurmctld already answers for the configured cluster."""
    try:
        return _run(["scontrol", "ping"], timeout=10).stdout.count("UP") > 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _munge_works() -> bool:
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
        return dec.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class SlurmCluster:
    """Context manager running a single-node SLURM cluster (partition `debug`) on this host.

    Usage: `with SlurmCluster() as cluster: subprocess.run(["sbatch", ...])`.
    """

    def __init__(self, start_timeout_s: float = 60.0, keep_state: bool = False) -> None:
        self.start_timeout_s = start_timeout_s
        self.keep_state = keep_state
        self.host = _short_hostname()
        self.cpus = os.cpu_count() or 1
        self.state_dir: Path | None = None
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._conf_backup: bytes | None = None
        self._wrote_conf = False
        self._created_key = False
        self._stopped = True

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Write slurm.conf, start munged/slurmctld/slurmd and wait for the node to be idle."""
        if os.geteuid() != 0:
            raise SlurmUnavailable("starting slurmctld/slurmd as SlurmUser=root needs root")
        if _missing_binaries():
            raise SlurmUnavailable(f"SLURM binaries missing: {_missing_binaries()}")
        env_conf = os.environ.get("SLURM_CONF")
        if env_conf and Path(env_conf) != SLURM_CONF:
            raise SlurmUnavailable(
                f"SLURM_CONF={env_conf} points at another cluster; the live tests use {SLURM_CONF} "
                "(unset SLURM_CONF to run them)"
            )
        if SLURM_CONF.exists() and _controller_answers():
            raise SlurmUnavailable(
                f"{SLURM_CONF} exists and a slurmctld already answers `scontrol ping`; "
                "not clobbering a running cluster"
            )
        self._stopped = False
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="lgkd-slurm-"))
        for sub in ("ctld", "spool"):
            (self.state_dir / sub).mkdir()
        if SLURM_CONF.exists():
            self._conf_backup = SLURM_CONF.read_bytes()
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(
            slurm_conf_text(self.state_dir, self.host, self.cpus, _real_memory_mb())
        )
        self._wrote_conf = True

        if not _munge_works():
            self._start_munged()
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._spawn("slurmd", ["slurmd", "-D"])
        self._wait_idle()

    def _start_munged(self) -> None:
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            MUNGE_KEY.write_bytes(os.urandom(1024))
            self._created_key = True
        try:
            shutil.chown(MUNGE_KEY, "munge", "munge")
        except (LookupError, PermissionError):
            pass  # no munge user: munged runs as root and --force accepts a root-owned key
        MUNGE_KEY.chmod(0o400)
        MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        assert self.state_dir is not None
        self._spawn("munged", ["munged", "-F", "--force"])
        deadline = time.monotonic() + 15
        while not _munge_works():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SlurmUnavailable("munged started but `munge -n | unmunge` fails after 15 s")
            time.sleep(0.2)

    def _spawn(self, name: str, cmd: list[str]) -> None:
        assert self.state_dir is not None
        with open(self.state_dir / f"{name}.out", "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in pytest must not kill them before stop()
            )
        self._procs.append((name, proc))

    def _check_alive(self) -> None:
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise SlurmUnavailable(
                    f"{name} exited with code {proc.returncode} during start-up:\n{self.logs()}"
                )

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        state = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                out = _run(["sinfo", "-h", "-N", "-n", self.host, "-o", "%t"], timeout=10)
                state = out.stdout.strip() or out.stderr.strip()
            except subprocess.TimeoutExpired:
                state = "sinfo timed out"
            if state == "idle":
                return
            time.sleep(0.5)
        raise SlurmUnavailable(
            f"node {self.host} not idle after {self.start_timeout_s:.0f} s "
            f"(last sinfo state: {state!r}):\n{self.logs()}"
        )

    def logs(self, tail_chars: int = 2000) -> str:
        """The tails of the daemons' log files, for error messages."""
        if self.state_dir is None:
            return ""
        parts = []
        for path in sorted(self.state_dir.glob("*.log")) + sorted(self.state_dir.glob("*.out")):
            text = path.read_text(errors="replace")[-tail_chars:]
            parts.append(f"--- {path.name}\n{text}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel jobs, stop the daemons this object started and restore slurm.conf. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        ctld_alive = any(n == "slurmctld" and p.poll() is None for n, p in self._procs)
        if ctld_alive:
            try:
                _run(["scancel", "--full", "--partition", PARTITION], timeout=10)
                self._wait_no_jobs(15)
            except (OSError, subprocess.TimeoutExpired):
                pass
        # slurmd first, then the controller, munged last (the others need it to say goodbye).
        for name, proc in reversed(self._procs):
            _terminate(name, proc)
        self._procs.clear()
        if self._wrote_conf:
            if self._conf_backup is not None:
                SLURM_CONF.write_bytes(self._conf_backup)
            else:
                SLURM_CONF.unlink(missing_ok=True)
            self._wrote_conf = False
        if self._created_key:
            MUNGE_KEY.unlink(missing_ok=True)
            self._created_key = False
        if self.state_dir is not None and not self.keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _wait_no_jobs(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = _run(["squeue", "-h", "-o", "%i"], timeout=10)
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.5)


def _terminate(name: str, proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
