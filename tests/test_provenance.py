"""Provenance (version, commit, hosts), ``--version``, and one log file per attempt."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lgkd_core
from lgkd_core import provenance
from lgkd_core.data.synthetic import synthesize

from helpers import TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]


def test_git_state_names_the_commit_and_whether_the_tree_is_dirty(tmp_path):
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    state = provenance.git_state(REPO)
    if head.returncode == 0:
        assert state["commit"] == head.stdout.strip() and isinstance(state["dirty"], bool)
    assert provenance.git_state(tmp_path) == {}  # not a git work tree: nothing claimed


def test_collect_records_versions_hosts_and_the_job():
    record = provenance.collect(world_size=1, global_batch=8, config={"lr": 0.1})
    assert record["lgkd_core"] == lgkd_core.__version__
    assert record["torch"] and record["python"] and record["hosts"]
    assert (record["world_size"], record["global_batch"], record["config"]) == (1, 8, {"lr": 0.1})


def test_version_flag():
    proc = subprocess.run(
        [sys.executable, "-m", "lgkd_core", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"lgkd_core {lgkd_core.__version__}"


def test_each_attempt_keeps_its_own_log(tmp_path):
    """launch --log: attempt N writes train.N.log and train.log links to the newest; deleting
    the link (what Snakemake does before a retry) keeps the earlier attempts' files."""
    log = tmp_path / "logs" / "train.log"
    cmd = [sys.executable, "-m", "lgkd_core", "launch", "--log", str(log), "--threads", "3",
           "--", "--version"]  # fmt: skip
    for attempt in (1, 2, 3):
        if attempt == 3:
            log.unlink()  # Snakemake removes the declared log before the job
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == proc.stderr == ""  # everything went to the attempt's file
        assert os.readlink(log) == f"train.{attempt}.log"
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["train.1.log", "train.2.log", "train.3.log", "train.log"]
    for n in (1, 2, 3):
        text = (log.parent / f"train.{n}.log").read_text()
        assert f"train.{n}.log: SLURM job" in text and "OMP_NUM_THREADS=3" in text
        assert text.rstrip().endswith(f"lgkd_core {lgkd_core.__version__}")


def test_tensorboard_without_the_package_is_one_clear_line(tmp_path):
    """`tensorboard: true` where the package is missing: exit 2, the key and the fix named."""
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")

    synthesize(tmp_path / "synthetic", seed=0, n_train=8, n_val=4, size=64, workers=1)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY_TRAIN.items()]
    cmd = [sys.executable, "-m", "lgkd_core", "train", "--dataset", "synthetic", "--task",
           "15-5", "--step", "0", "--method", "FT", "--data-root", str(tmp_path), "--out",
           str(tmp_path / "out"), "--epochs", "1", "--batch-size", "4", "--tensorboard",
           *flags]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "tensorboard: true" in proc.stderr and "pip install tensorboard" in proc.stderr
    assert not (tmp_path / "out" / "model.pt").exists()
