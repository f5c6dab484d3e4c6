"""Smoke tests of the bench/ scripts (``--quick``, in a subprocess): each exits 0 and prints its
RATIO lines (not whether targets are met: timings are not asserted). bench_losses also checks
that the project's losses equal the reference formulation, which is correctness, so its VALUES
line must say they match. Plus the fast confusion-matrix path the metrics bench led to, on
inputs that take each of its branches.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lgkd_core.metrics as metrics
from lgkd_core.metrics import ConfusionMatrix

REPO = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"^RATIO (\S+): [\d.]+x vs .+ \(target >= [\d.]+: (met|not met)\)$", re.M)

# script -> the RATIO names it must print (on a machine without CUDA)
EXPECTED = {
    "bench_data_path.py": ["data_path_per_core"],
    "bench_splits.py": ["splits_15-1_task", "splits_15-1_task_1proc"],
    "bench_losses.py": ["losses_lgkd_iteration"],
    "bench_metrics.py": ["metrics_cpu"],
    "bench_train_cpu.py": [
        "train_cpu_teacher_inference_mode",
        "train_cpu_channels_last",
        "train_cpu_bf16",
        "train_cpu_bf16_channels_last",
        "train_cpu_teacher_no_grad",
    ],
    "bench_dry_run.py": ["dry_run_all_experiments"],
    "bench_gpu.py": [],
}


def run_quick(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


@pytest.mark.parametrize("script", list(EXPECTED))
def test_bench_script_runs_quick_and_prints_its_ratios(script):
    proc = run_quick(script)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    names = [m.group(1) for m in RATIO.finditer(out)]
    cuda = torch.cuda.is_available()
    if script == "bench_gpu.py" and not cuda:
        assert out.startswith("SKIP: no CUDA device (") and names == [], out
        return
    assert out.startswith("== bench_") and "\nmachine: cpu=" in out
    for name in EXPECTED[script]:
        assert name in names, f"{script} did not print RATIO {name}:\n{out}"
    if script == "bench_metrics.py" and not cuda:
        assert "SKIP gpu: no CUDA device" in out
    if script == "bench_losses.py":
        line = re.search(r"^VALUES (\S+): max abs diff (\S+), max rel diff (\S+)", out, re.M)
        assert line is not None, out
        assert line.group(1) == "match" and float(line.group(3)) <= 1e-4, line.group(0)


def _numpy_confusion(pred, target, n, ignore):
    m = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(target.tolist(), pred.tolist(), strict=True):
        if 0 <= t < n and t != ignore:
            m[int(t), int(p)] += 1
    return m


@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32, torch.int64, torch.float32])
@pytest.mark.parametrize("ignore", [255, 2])
def test_confusion_matrix_over_cpu_chunks_matches_numpy(monkeypatch, target_dtype, ignore):
    """Several chunks, targets negative / beyond int32 / ignored / beyond the classes, wrong
    predictions only on skipped pixels (accepted) or on a counted one (refused)."""
    monkeypatch.setattr(metrics, "_CPU_CHUNK", 50)
    rng = np.random.default_rng(0)
    n, size = 5, 333
    target = rng.integers(0, n, size)
    target[rng.random(size) < 0.1] = 255
    if target_dtype != torch.uint8:
        target[rng.random(size) < 0.05] = -3
    if target_dtype == torch.int64:
        target[::17] = 2**32 + 1  # would read as 1 after a plain int32 cast
        target[::19] = -(2**40)
    skipped = (target < 0) | (target >= n) | (target == ignore)
    pred = rng.integers(0, n, size)
    pred[skipped & (rng.random(size) < 0.5)] = 7  # out of range where not counted
    cm = ConfusionMatrix(n, ignore_index=ignore)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target).to(target_dtype))
    expected = _numpy_confusion(pred, target, n, ignore)
    counted = [c for c in range(n) if c != ignore]
    assert expected.sum() > 200 and (expected.diagonal()[counted] > 0).all()
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    pred[np.flatnonzero(~skipped)[-1]] = n  # one counted pixel with an impossible class
    with pytest.raises(ValueError, match="num_classes"):
        cm.update(torch.from_numpy(pred), torch.from_numpy(target).to(target_dtype))
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)  # nothing added
