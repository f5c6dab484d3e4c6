"""The job launcher (one process, torchrun, srun across nodes) and released step-0 imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lgkd_core.engine.checkpoint import CheckpointError, load_model_file, save_model_file
from lgkd_core.engine.released import import_step0
from lgkd_core.experiments import ConfigError, parse_run, resolve
from lgkd_core.launch import launch_command, loader_workers, threads_per_process
from lgkd_core.models import build_model
from lgkd_core.tasks import get_task

ARCH = {"backbone": "resnet18_w0.25", "head_channels": 32, "output_stride": 16}


def test_launch_command_forms():
    argv = ["train", "--step", "1"]
    assert launch_command(argv, 1, python="py") == ["py", "-m", "lgkd_core", *argv]
    local = launch_command(argv, 4, python="py")
    assert local[:5] == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert local[-3:] == argv
    multi = launch_command(argv, 4, nnodes=2, python="py", head_host="node7", job_id="123")
    assert multi[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                         "--kill-on-bad-exit=1"]  # fmt: skip
    assert "--nnodes=2" in multi and "--nproc-per-node=4" in multi
    assert "--rdzv-endpoint=node7:29400" in multi and "--rdzv-id=123" in multi
    with pytest.raises(ValueError, match="SLURM allocation"):
        launch_command(argv, 4, nnodes=2, python="py")
    assert threads_per_process(16, 4) == 4 and threads_per_process(1, 2) == 1
    # Each process's DataLoader workers take a core each: 16 threads, 2 ranks, 4 workers -> 4.
    assert threads_per_process(16, 2, workers=4) == 4 and threads_per_process(4, 2, workers=3) == 1
    assert loader_workers(["train", "--workers", "3"]) == 3
    assert loader_workers(["train", "--workers=2"]) == 2 and loader_workers(["train"]) == 0


def test_launch_sets_threads_per_rank_and_names_the_job(tmp_path):
    """Two local processes through torchrun: each rank sees OMP_NUM_THREADS = threads / ranks."""
    env = {**os.environ, "SLURM_JOB_ID": "4242", "OMP_NUM_THREADS": "4"}
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, pathlib, sys\n"
        "pathlib.Path(sys.argv[1], os.environ['RANK']).write_text(os.environ['OMP_NUM_THREADS'])\n"
    )
    # The launcher's torchrun line with a probe script in place of `-m lgkd_core ...`.
    cmd = launch_command(["--version"], 2, python=sys.executable)
    cmd = [*cmd[: cmd.index("-m", 3)], str(probe), str(tmp_path)]
    subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "2"}, check=True, timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["0", "1"]
    # The CLI: the job line names the SLURM job and the per-rank threads (4 threads, 2 ranks).
    proc = subprocess.run(
        [sys.executable, "-m", "lgkd_core", "launch", "--nproc-per-node", "2", "--threads", "4",
         "--", "evaluate", "--help"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SLURM job 4242" in proc.stderr and "OMP_NUM_THREADS=2" in proc.stderr


def _step0_file(path: Path, task_name: str = "15-5", reference: bool = False, **arch) -> Path:
    task = get_task("synthetic", task_name)
    arch = {**ARCH, **arch}
    model = build_model(classes_per_step=task.classes_per_step(0), norm="abn", **arch)
    state = model.state_dict()
    if reference:  # the authors' released format: DDP prefixes under model_state
        torch.save({"model_state": {f"module.{k}": v for k, v in state.items()}, "epoch": 30},
                   path)  # fmt: skip
    else:
        meta = {
            "dataset": "synthetic",
            "task": task_name,
            "step": 0,
            "order": task.order(0),
            "classes_per_step": task.classes_per_step(0),
            **arch,
        }
        save_model_file(path, state, meta)
    return path


def test_import_reference_format_checkpoint(tmp_path):
    src = _step0_file(tmp_path / "15-x-voc.pth", reference=True)
    out = import_step0(str(src), "synthetic", "15-5", tmp_path / "run" / "model.pt", ARCH, tmp_path)
    payload = load_model_file(out)
    assert payload["order"] == list(range(16)) and payload["classes_per_step"] == [16]
    original = torch.load(src, weights_only=True)["model_state"]
    for key, value in payload["model_state"].items():
        assert torch.equal(value, original[f"module.{key}"])
    # file:// URLs work as well.
    out2 = import_step0(f"file://{src}", "synthetic", "15-5", tmp_path / "b.pt", ARCH, tmp_path)
    assert out2.exists()


def test_import_refuses_wrong_architecture_and_layout(tmp_path):
    src = _step0_file(tmp_path / "m.pt", head_channels=48)
    out = tmp_path / "out" / "model.pt"
    with pytest.raises(ValueError, match=r"head_channels=48.*head_channels=32"):
        import_step0(str(src), "synthetic", "15-5", out, ARCH, tmp_path)
    ref = _step0_file(tmp_path / "r.pth", reference=True, backbone="resnet18_w0.5")
    with pytest.raises(CheckpointError, match="does not fit the model architecture"):
        import_step0(str(ref), "synthetic", "15-5", out, ARCH, tmp_path)
    with pytest.raises(CheckpointError, match=r"needs classes"):
        import_step0(str(_step0_file(tmp_path / "x.pt")), "synthetic", "19-1", out, ARCH, tmp_path)
    with pytest.raises(FileNotFoundError, match="step0_checkpoint"):
        import_step0(str(tmp_path / "missing.pth"), "synthetic", "15-5", out, ARCH, tmp_path)
    assert not out.exists()


def test_resolve_experiments_and_runs():
    cfg = {
        "dataset_defaults": {"synthetic": {"epochs": 3, "epochs_step0": 5, "seed": 7,
                                           "pretrained": "none"}},
        "experiments": {
            "a": {"dataset": "synthetic", "task": "15-1", "method": "LGKD"},
            "s": {"dataset": "voc", "task": "15-1", "method": "MiB", "pretrained": "iabn",
                  "orders": ["15-5s", "15-5s_b"], "seeds": [1, 2]},
        },
    }  # fmt: skip
    exps = resolve(cfg)
    assert exps["a"].runs() == ["a"] and exps["a"].get("epochs", 0) == 5
    assert exps["a"].get("epochs", 1) == 3 and exps["a"].members[0].seed == 7
    assert exps["s"].runs() == [
        "s/members/15-5s-seed1", "s/members/15-5s-seed2",
        "s/members/15-5s_b-seed1", "s/members/15-5s_b-seed2",
    ]  # fmt: skip
    assert parse_run("s/members/15-5s_b-seed2") == ("s", "15-5s_b-seed2")
    with pytest.raises(ConfigError):
        parse_run("../x")
    bad = {"experiments": {"b": {"dataset": "ade", "task": "15-1", "method": "FT"}}}
    with pytest.raises(ConfigError, match=r"experiments\.b\.task.*100-50"):
        resolve(bad)
