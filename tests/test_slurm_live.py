"""Live SLURM tests: a real single-node cluster (slurm-wlm + munge) started for this module.

The cluster is installed with apt-get when missing and started once per session; where that is
impossible (not root, no apt-get, install or start-up failure, a cluster already running, or
LGKD_NO_SLURM_INSTALL=1 with SLURM absent) every test here is skipped with the reason printed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from slurm_cluster import SlurmCluster, SlurmUnavailable, ensure_slurm_installed

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
# What the profile needs on this test cluster: no accounts and no accounting database (the
# plugin's default sacct status command hangs without one), first status check after 2 s and
# then every 2 s (the default 10 s would dominate these short jobs), the per-job logs kept (they
# name the job ids).
PROFILE_FLAGS = [
    "--slurm-no-account", "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
    "--slurm-keep-successful-logs",
]  # fmt: skip


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One live cluster for the whole session; stopped (and slurm.conf restored) at the end."""
    if os.environ.get("LGKD_TEST_SLURM") != "1":
        # Installing SLURM (apt-get) and writing its /etc configuration change the host.
        pytest.skip("live SLURM changes the host (apt-get, /etc/slurm): set LGKD_TEST_SLURM=1")
    if os.environ.get("LGKD_NO_SLURM_INSTALL") == "1" and shutil.which("slurmctld") is None:
        pytest.skip("live SLURM: slurmctld missing and LGKD_NO_SLURM_INSTALL=1 forbids apt-get")
    try:
        took = ensure_slurm_installed()
    except SlurmUnavailable as err:
        pytest.skip(f"live SLURM unavailable: {err}")
    if took:
        print(f"\n[slurm] installed slurm-wlm and munge with apt-get in {took:.1f} s")
    cluster = SlurmCluster()
    t0 = time.monotonic()
    try:
        cluster.start()
    except SlurmUnavailable as err:
        pytest.skip(f"live SLURM could not start: {err}")
    print(f"\n[slurm] single-node cluster {cluster.host} up in {time.monotonic() - t0:.1f} s")
    # A SIGTERM (CI timeout, `kill`) would end Python without teardown or atexit: turn it into
    # KeyboardInterrupt so pytest unwinds and the daemons are stopped.
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _slurm_log_job_ids(workdir: Path) -> dict[str, list[str]]:
    """Job ids per rule from the plugin's logs: .snakemake/slurm_logs/rule_<name>/.../<id>.log."""
    ids: dict[str, list[str]] = {}
    root = workdir / ".snakemake" / "slurm_logs"
    for log in sorted(root.rglob("*.log")):
        rule = log.relative_to(root).parts[0].removeprefix("rule_")
        ids.setdefault(rule, []).append(log.stem)
    return ids


def _run_snakemake(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(SNAKEMAKE), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return proc


def test_sbatch_wrap_runs_a_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """A batch job runs on the node, sees its own job id and can start a job step with srun."""
    out = tmp_path / "job.out"
    proc = subprocess.run(
        ["sbatch", "--wait", "--parsable", "-p", "debug", "-o", str(out),
         "--wrap", 'echo "job=$SLURM_JOB_ID"; srun -n1 hostname -s'],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    assert job_id.isdigit()
    lines = out.read_text().split()
    assert lines == [f"job={job_id}", slurm_cluster.host]


def test_launch_finds_the_job_nodes_without_slurm_job_nodelist(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """The executor plugin's job step lacks SLURM_JOB_NODELIST: the launcher asks scontrol."""
    out = tmp_path / "nodes.out"
    probe = (
        f"env -u SLURM_JOB_NODELIST {sys.executable} -c "
        "'from lgkd_core.launch import job_nodelist, first_host; "
        "print(first_host(job_nodelist()))'"
    )
    proc = subprocess.run(
        ["sbatch", "--wait", "--parsable", "-p", "debug", "-o", str(out), "--wrap", probe],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stderr, out.read_text() if out.exists() else "")
    assert out.read_text().split() == [slurm_cluster.host]


# ---------------------------------------------------------------- the real workflow via the profile

PROFILE = REPO / "profiles" / "slurm"
MAIN_SNAKEFILE = next(
    (p for p in (REPO / "Snakefile", REPO / "workflow" / "Snakefile") if p.exists()), None
)


ENGINE_READY = (REPO / "lgkd_core" / "models" / "__init__.py").exists()


def _tiny_experiment_config() -> dict:
    """A 2-step synthetic LGKD experiment small enough to train in seconds per step.

    Paths (data/, results/, logs/) stay at their defaults, relative to the run's --directory.
    """
    return {
        "synthetic": {"n_train": 60, "n_val": 30, "size": 64, "seed": 0},
        "experiments": {
            "tiny": {
                "dataset": "synthetic",
                "task": "15-5",
                "method": "LGKD",
                "epochs": 1,
                "epochs_step0": 1,
                "backbone": "resnet18_w0.25",
                "head_channels": 32,
                "batch_size": 8,
                "cpus": 1,
            }
        },
    }


@pytest.mark.slow
@pytest.mark.skipif(
    not (PROFILE / "config.yaml").exists() or MAIN_SNAKEFILE is None or not ENGINE_READY,
    reason="profiles/slurm/config.yaml, the main Snakefile or lgkd_core.models is not there yet",
)
def test_workflow_through_slurm_profile(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Each train and evaluate step of a tiny experiment is its own SLURM job; the table appears."""
    assert MAIN_SNAKEFILE is not None
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(_tiny_experiment_config()))
    _run_snakemake(
        ["--snakefile", str(MAIN_SNAKEFILE), "--directory", str(tmp_path),
         "--profile", str(PROFILE), "--configfile", str(cfg), "--jobs", "2", *PROFILE_FLAGS,
         # --configfile merges into config.yaml's experiments: ask for ours only.
         "results/tiny/table.csv"],
        cwd=REPO, timeout=170,
    )  # fmt: skip
    table = tmp_path / "results" / "tiny" / "table.csv"
    assert table.exists() and table.read_text().strip()
    # Step 1's job trained step 1 only: the linked step 0 is still the shared run's model.
    link = tmp_path / "results" / "tiny" / "step0" / "model.pt"
    assert link.is_symlink(), "a SLURM job re-made the linked step 0"
    logged = _slurm_log_job_ids(tmp_path)
    train = [j for rule, ids in logged.items() if rule.startswith("train") for j in ids]
    evaluate = [j for rule, ids in logged.items() if rule.startswith("eval") for j in ids]
    assert len(train) == 2 and len(evaluate) == 2, logged
    all_ids = train + evaluate
    assert len(set(all_ids)) == len(all_ids), logged
    # The rules' own logs name the job they ran in (SLURM_JOB_ID echoed by the rule or engine).
    rule_logs = " ".join(p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*.log"))
    for job_id in all_ids:
        assert re.search(rf"\b{job_id}\b", rule_logs), f"job {job_id} not named in logs/"


@pytest.mark.slow
@pytest.mark.skipif(
    not (PROFILE / "config.yaml").exists() or MAIN_SNAKEFILE is None or not ENGINE_READY,
    reason="profiles/slurm/config.yaml, the main Snakefile or lgkd_core.models is not there yet",
)
def test_time_limit_kill_then_retry_resumes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """Step 0 cannot finish in its 1-minute limit: at the limit SLURM sends SIGTERM, the trainer
    saves its state at the next iteration and exits; the retry (attempt 2, its own log) resumes
    from that iteration. Triggered on the jobs' own logs, not on how fast this machine is."""
    assert MAIN_SNAKEFILE is not None
    config = _tiny_experiment_config()
    config["experiments"]["tiny"].update(epochs_step0=100_000, runtime=1)  # never done in time
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    cmd = [str(SNAKEMAKE), "--snakefile", str(MAIN_SNAKEFILE), "--directory", str(tmp_path),
           "--profile", str(PROFILE), "--configfile", str(cfg), "--retries", "1",
           "--jobs", "2", *PROFILE_FLAGS,
           "results/tiny/step0/model.pt"]  # fmt: skip
    started = time.monotonic()
    err = tmp_path / "snakemake.err"  # a file, not a pipe nobody reads while it runs
    with err.open("w") as err_file:
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err_file)  # fmt: skip
    retry = None
    try:
        deadline = time.monotonic() + 600  # only against a hang: the trigger is the retry's log
        while retry is None:
            assert proc.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "no resumed retry appeared"
            for log in tmp_path.glob("logs/step0-synthetic-15-5-*/step0/train.2.log"):
                if "resuming step 0 from" in log.read_text():
                    retry = log
            time.sleep(0.5)
    finally:
        # The SLURM jobs first (killing Snakemake leaves them running), then Snakemake.
        subprocess.run(["scancel", "--full", "--partition", "debug"], timeout=30)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    print(
        f"\n[slurm] time limit, SIGTERM and resumed retry after {time.monotonic() - started:.0f} s"
    )
    first = (retry.parent / "train.1.log").read_text()
    stopped = re.search(r"stopping step 0 on SIGTERM: saved (\S+) \(iteration (\d+)\)", first)
    assert stopped, first[-3000:]
    text = retry.read_text()
    assert f"resuming step 0 from {stopped[1]}" in text, text[-3000:]
    assert f"(iteration {stopped[2]} of " in text
    attempts = _slurm_log_job_ids(tmp_path).get("train", [])
    assert len(attempts) == 2 and f"SLURM job {max(attempts, key=int)}" in text, attempts
