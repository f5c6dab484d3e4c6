"""The baselines in real training: a shared step 0 gathering importance, then each step 1.

Tiny runs on the embedded synthetic data (24 images of 64 px, a quarter-width ResNet-18, CPU):
step 0 with and without ``--importance`` (same weights), a step 1 of LwF-MC, EWC, PI, RW and
MiB+LGKD from it, and an EWC step 1 killed (SIGKILL) after its first checkpoint that resumes to
the same weights and the same Fisher, bit for bit.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lgkd_core.engine.checkpoint import load_model_file, safe_load
from lgkd_core.engine.trainer import TrainConfig, train

from helpers import ENV, TINY_TRAIN, assert_same_tensors, checkpoints, kill_after_checkpoints

pytestmark = pytest.mark.slow

TINY = {**TINY_TRAIN, "batch_size": 4, "seed": 7}


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(seed=1, n_train=24, n_val=4)


def _cfg(data_root: Path, out: Path, step: int, method: str, **kw) -> TrainConfig:
    # Step 0: 5 iterations per epoch, 3 epochs (RW samples its score at updates 1 and 11).
    base = {"epochs": 3 if step == 0 else 1, "lr": 0.05 if step == 0 else 0.01}
    return TrainConfig(
        dataset="synthetic", task="15-5", step=step, method=method, data_root=data_root,
        out=out, **{**TINY, **base, **kw},
    )  # fmt: skip


@pytest.fixture(scope="module")
def step0(data_root, tmp_path_factory) -> dict[str, Path]:
    """The shared step 0, with and without importance statistics."""
    return {
        flag: train(_cfg(data_root, tmp_path_factory.mktemp(f"step0-{flag}"), 0, "FT", **kw))
        for flag, kw in (("plain", {}), ("importance", {"importance": True}))
    }


def test_step0_importance_gathers_all_three_and_keeps_the_weights(step0):
    plain, tracked = load_model_file(step0["plain"]), load_model_file(step0["importance"])
    assert_same_tensors(plain["model_state"], tracked["model_state"])
    assert "regularizers" not in plain
    reg = tracked["regularizers"]
    assert set(reg) == {"ewc", "pi", "rw"}
    params = {k for k in tracked["model_state"] if k.endswith((".weight", ".bias"))}
    assert set(reg["ewc"]["fisher"]) == set(reg["pi"]["score"]) == set(reg["rw"]["score"]) == params
    for name, w in tracked["model_state"].items():
        if name in params:
            for t in (reg["ewc"]["fisher"][name], reg["rw"]["fisher"][name]):
                assert t.shape == w.shape and t.device.type == "cpu" and (t > 0).all()
            assert (reg["pi"]["score"][name] >= 0).all() and (reg["rw"]["score"][name] >= 0).all()
    # 15 step-0 iterations: RW's score is sampled at updates 1 and 11, PI's integral all along.
    assert any(s.sum() > 0 for s in reg["pi"]["score"].values())
    assert any(s.sum() > 0 for s in reg["rw"]["score"].values())


# Every method of the paper's tables: two steps each (step 1 from the shared step 0).
EXPECTED = {
    "FT": {"ce"},
    "LwF": {"ce", "kd"},
    "ILT": {"ce", "kd", "de"},
    "MiB": {"ce", "kd"},
    "PLOP": {"ce", "pod"},
    "LGKD": {"ce", "kd", "pod"},
    "LwF-MC": {"ce", "icarl"},
    "EWC": {"ce", "reg"},
    "PI": {"ce", "reg"},
    "RW": {"ce", "reg"},
    "MiB+LGKD": {"ce", "kd"},
}


@pytest.mark.parametrize("method", list(EXPECTED))
def test_step1_of_each_baseline(method, data_root, step0, tmp_path):
    model = train(_cfg(data_root, tmp_path, 1, method, teacher=step0["importance"]))
    payload = load_model_file(model)
    stats = payload["train_stats"]
    components = set(stats) - {"images_per_second", "data_wait_fraction", "total"}
    assert components == EXPECTED[method], stats
    assert all(math.isfinite(v) for v in stats.values()), stats
    assert all(torch.isfinite(v.float()).all() for v in payload["model_state"].values())
    kind = method.lower()
    if "reg" not in EXPECTED[method]:
        assert "regularizers" not in payload
        return
    assert stats["reg"] > 0
    assert set(payload["regularizers"]) == {kind}
    state, before = payload["regularizers"][kind], load_model_file(step0["importance"])
    prev = before["regularizers"][kind]
    new_params = {"cls.1.weight", "cls.1.bias"}
    key = "score" if kind == "pi" else "fisher"
    assert new_params <= set(state[key]) and set(prev[key]) <= set(state[key])
    if kind == "pi":  # the new path integral adds to the previous score
        for name, s in prev["score"].items():
            assert (state["score"][name] >= s).all(), name
    else:  # the Fisher EMA continued from step 0's
        assert not torch.equal(state["fisher"]["cls.0.weight"], prev["fisher"]["cls.0.weight"])


def test_regularised_step1_without_statistics_fails_at_startup(data_root, step0, tmp_path):
    with pytest.raises(ValueError, match=r"holds none: train step 0 with --importance") as info:
        train(_cfg(data_root, tmp_path, 1, "EWC", teacher=step0["plain"]))
    assert str(step0["plain"]) in str(info.value) and "step0_importance: true" in str(info.value)
    assert not (tmp_path / "model.pt").exists()


# -- resume ------------------------------------------------------------------------------------
def _cmd(data_root: Path, out: Path, teacher: Path, *extra: str) -> list[str]:
    """EWC step 1: 3 iterations per epoch, 3 epochs (time to kill it after iteration 1)."""
    return [
        sys.executable, "-m", "lgkd_core", "train", "--dataset", "synthetic", "--task", "15-5",
        "--step", "1", "--method", "EWC", "--data-root", str(data_root), "--out", str(out),
        "--teacher", str(teacher), "--epochs", "3", "--batch-size", "4", "--lr", "0.01",
        "--crop-size", "64", "--output-stride", "8", "--backbone", "resnet18_w0.25",
        "--head-channels", "32", "--device", "cpu", "--seed", "7", "--workers", "0",
        "--log-every", "1000", *extra,
    ]  # fmt: skip


def test_killed_ewc_step_resumes_bit_identically(data_root, step0, tmp_path):
    teacher = step0["importance"]
    ref = subprocess.run(
        _cmd(data_root, tmp_path / "ref", teacher), env=ENV, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "run"
    cmd = _cmd(data_root, out, teacher, "--checkpoint-every", "1")
    kill_after_checkpoints(cmd, out / "state")  # on the job's own progress, no sleep-wait
    assert not (out / "model.pt").exists()
    newest = checkpoints(out / "state")[-1]
    state = safe_load(newest)
    assert 0 < state["global_iter"] < 9 and set(state["regularizers"]) == {"ewc"}

    resumed = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming step 1 from {newest}" in resumed.stderr, resumed.stderr[-3000:]
    a, b = load_model_file(tmp_path / "ref" / "model.pt"), load_model_file(out / "model.pt")
    assert_same_tensors(a["model_state"], b["model_state"])
    assert_same_tensors(a["regularizers"]["ewc"]["fisher"], b["regularizers"]["ewc"]["fisher"])
