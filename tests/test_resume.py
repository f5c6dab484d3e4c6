"""Killed training jobs resume bit-identically; a diverging job stops naming its last good state.

The resume tests run the real command line (``python -m lgkd_core train``) in a subprocess on the
embedded synthetic data (64 px, a quarter-width ResNet-18), SIGKILL it as soon as its first
checkpoint exists, run the same command again and compare the final weights, bit for bit, with
an uninterrupted run (CPU, fixed seed, deterministic algorithms).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lgkd_core.engine.checkpoint import load_model_file, safe_load
from lgkd_core.engine.trainer import NonFiniteLossError, TrainConfig, train

from helpers import (
    ENV,
    assert_same_tensors,
    checkpoints,
    free_port,
    kill_after_checkpoints,
    sha256,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(synthetic_data) -> Path:
    return synthetic_data(seed=1, n_train=48, n_val=8)


def _train_cmd(data_root: Path, out: Path, step: int, *extra: str) -> list[str]:
    """Step 0: 11 iterations per epoch; step 1: 5 (4 epochs, to leave time to kill it)."""
    cmd = [
        sys.executable, "-m", "lgkd_core", "train", "--dataset", "synthetic", "--task", "15-5",
        "--step", str(step), "--method", "LGKD", "--data-root", str(data_root), "--out", str(out),
        "--epochs", "3" if step == 0 else "4", "--batch-size", "4",
        "--lr", "0.05" if step == 0 else "0.01",
        "--crop-size", "64", "--output-stride", "8", "--backbone", "resnet18_w0.25",
        "--head-channels", "32", "--device", "cpu", "--seed", "7", "--log-every", "1000",
    ]  # fmt: skip
    return cmd + list(extra)


def _run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_same_weights(a: Path, b: Path) -> None:
    assert_same_tensors(load_model_file(a)["model_state"], load_model_file(b)["model_state"])


@pytest.fixture(scope="module")
def step0_reference(data_root, tmp_path_factory) -> Path:
    """An uninterrupted step 0 (also the teacher of step 1)."""
    out = tmp_path_factory.mktemp("ref0")
    _run(_train_cmd(data_root, out, 0, "--workers", "0"))
    return out / "model.pt"


@pytest.fixture(scope="module")
def step1_reference(data_root, step0_reference, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref1")
    _run(_train_cmd(data_root, out, 1, "--workers", "0", "--teacher", str(step0_reference)))
    return out / "model.pt"


# The uninterrupted references use 0 loader workers and epoch checkpoints: neither loader
# workers nor the checkpoint interval may change a single bit of the result.
CASES = {
    "step0-epoch-ckpt": (0, ["--workers", "0"]),
    "step0-mid-epoch-ckpt": (0, ["--workers", "0", "--checkpoint-every", "4"]),
    "step1-lgkd-epoch-ckpt": (1, ["--workers", "0"]),
    "step1-lgkd-workers2-mid-epoch": (1, ["--workers", "2", "--checkpoint-every", "2"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_killed_job_resumes_bit_identically(
    case, data_root, step0_reference, step1_reference, tmp_path
):
    step, extra = CASES[case]
    reference = step1_reference if step else step0_reference
    if step:
        extra = [*extra, "--teacher", str(step0_reference)]
    teacher_sha = sha256(step0_reference)
    out = tmp_path / "run"
    cmd = _train_cmd(data_root, out, step, *extra)

    kill_after_checkpoints(cmd, out / "state")
    assert not (out / "model.pt").exists(), "a killed job must not leave a model file"
    kept = checkpoints(out / "state")
    assert kept, "the checkpoint written before the kill is kept"
    newest = kept[-1]
    state = safe_load(newest)
    if "--checkpoint-every" in extra:
        assert state["batch"] > 0, "the first checkpoint is inside an epoch"

    proc = _run(cmd)
    assert f"resuming step {step} from {newest}" in proc.stderr, proc.stderr[-3000:]
    assert f"epoch {state['epoch']}, batch {state['batch']}" in proc.stderr
    _assert_same_weights(out / "model.pt", reference)
    assert sha256(step0_reference) == teacher_sha, "the teacher file must not change"
    assert not checkpoints(out / "state"), "the state of a finished step is cleared"


def test_truncated_newest_checkpoint_is_skipped_for_the_previous_one(
    data_root, step0_reference, tmp_path
):
    out = tmp_path / "run"
    cmd = _train_cmd(data_root, out, 0, "--workers", "0", "--checkpoint-every", "3")
    kill_after_checkpoints(cmd, out / "state", count=2)
    older, newest = checkpoints(out / "state")[-2:]
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # e.g. a disk that filled up
    proc = _run(cmd)
    assert f"skipping unusable checkpoint {newest}" in proc.stderr, proc.stderr[-3000:]
    assert f"resuming step 0 from {older}" in proc.stderr
    _assert_same_weights(out / "model.pt", step0_reference)


def test_checkpoint_of_another_configuration_is_not_resumed(data_root, step0_reference, tmp_path):
    out = tmp_path / "changed"
    cmd = _train_cmd(data_root, out, 0, "--workers", "0")
    kill_after_checkpoints(cmd, out / "state")
    proc = _run([*cmd, "--lr", "0.02"])  # a different run: its checkpoints must not be used
    assert "different configuration" in proc.stderr and "resuming" not in proc.stderr
    assert (out / "model.pt").is_file()


def test_checkpoints_of_another_configuration_do_not_shadow_this_runs(
    data_root, step0_reference, tmp_path
):
    """A killed run with another lr left checkpoints further on than this run's first one: they
    must neither prune nor hide this run's checkpoints (its progress would be lost)."""
    out = tmp_path / "run"
    cmd = _train_cmd(data_root, out, 0, "--workers", "0")
    other = [*cmd, "--lr", "0.02", "--checkpoint-every", "2"]
    proc = subprocess.Popen(other, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while len(checkpoints(out / "state")) < 2 or checkpoints(out / "state")[-1].name < (
            "ckpt-000000014.pt"
        ):
            assert proc.poll() is None, "the other run ended before it was killed"
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    foreign = frozenset(p.name for p in checkpoints(out / "state"))
    kill_after_checkpoints(cmd, out / "state", ignore=foreign)
    proc = _run(cmd)
    # Epoch 1 of this run (iteration 11) comes before the other run's files (12, 14) by name.
    assert f"resuming step 0 from {out / 'state' / 'ckpt-000000011.pt'}" in proc.stderr, (
        proc.stderr[-3000:]
    )
    _assert_same_weights(out / "model.pt", step0_reference)
    # The other run's checkpoints are kept aside, not deleted.
    assert {p.name for p in (out / "state" / "other-config").glob("ckpt-*.pt")} == foreign


def test_nonfinite_loss_stops_naming_step_iteration_and_checkpoint(data_root, tmp_path):
    """lr 1e12 blows the weights up after one step; 3 non-finite iterations in a row stop it."""
    cfg = TrainConfig(
        dataset="synthetic", task="15-5", step=0, method="LGKD", data_root=data_root,
        out=tmp_path, epochs=3, batch_size=4, lr=1e12, crop_size=64, output_stride=8,
        backbone="resnet18_w0.25", head_channels=32, workers=0, device="cpu", log_every=1000,
        max_nonfinite=3, checkpoint_every=1,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # in this process only for this call: the cores are shared
    try:
        with pytest.raises(NonFiniteLossError) as info:
            train(cfg)
    finally:
        torch.set_num_threads(threads)
    msg = str(info.value)
    found = re.search(
        r"step 0: 3 consecutive iterations with non-finite loss or gradients, at iteration "
        r"(\d+) \(epoch 0\); last good checkpoint: (\S+) \(iteration (\d+)[,)]",
        msg,
    )
    assert found, msg
    stop, path, good = int(found[1]), Path(found[2]), int(found[3])
    # No checkpoint is written during the streak: it would prune the good one (2 are kept).
    assert good == stop - 3
    assert path.is_file() and path.parent == tmp_path / "state", "state/ is kept"
    state = safe_load(path)
    assert state["global_iter"] == good
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())
    assert checkpoints(tmp_path / "state") == [path]
    assert not (tmp_path / "model.pt").exists()


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_dead_ddp_rank_fails_the_whole_job(data_root, tmp_path):
    """torchrun with 2 CPU processes (gloo); SIGKILL rank 1 after the first checkpoint."""
    out = tmp_path / "ddp"
    train_args = _train_cmd(data_root, out, 0, "--workers", "0")[3:]
    train_args[train_args.index("--epochs") + 1] = "50"  # far from done when killed
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "lgkd_core", *train_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not checkpoints(out / "state"):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        ranks = {_rank_of(p): p for p in _descendants(proc.pid)}
        assert 0 in ranks and 1 in ranks, ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("torchrun still runs 90 s after a rank died")
        elapsed = time.monotonic() - killed_at
        assert code != 0
        assert not any(Path(f"/proc/{p}").exists() for p in ranks.values()), "a rank survived"
        stderr = proc.stderr.read().decode()
        assert "Signals.SIGKILL" in stderr or "exitcode  : -9" in stderr, stderr[-3000:]
        assert checkpoints(out / "state"), "the checkpoints written before are kept"
        assert not (out / "model.pt").exists()
        print(f"torchrun exited {code} {elapsed:.1f} s after rank 1 was killed")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()


def test_dead_rank_without_launcher_fails_the_survivor(data_root, tmp_path):
    """Ranks started directly (as srun does, no torchrun agent): SIGKILL rank 0, which also
    hosts the rendezvous store; rank 1 must fail on its own within 90 s, not wait forever."""
    out = tmp_path / "ddp"
    cmd = _train_cmd(data_root, out, 0, "--workers", "0")
    cmd[cmd.index("--epochs") + 1] = "50"
    port = free_port()
    procs = []
    try:
        for rank in range(2):
            env = {
                **ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            }  # fmt: skip
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            )
        deadline = time.monotonic() + 240
        while not checkpoints(out / "state"):
            assert all(p.poll() is None for p in procs), procs[0].stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        procs[0].kill()
        try:
            code = procs[1].wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("rank 1 still runs 90 s after rank 0 died")
        assert code != 0
        assert "Connection" in procs[1].stderr.read().decode()
        assert checkpoints(out / "state"), "the checkpoints written before are kept"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stderr.close()


def test_sigterm_saves_the_iteration_and_the_retry_resumes_from_it(
    data_root, step0_reference, step1_reference, tmp_path
):
    """SIGTERM (what SLURM sends before a time limit or a preemption) mid-epoch: the job saves
    its state at the next iteration and exits 143; the same command resumes from that
    iteration (not from the last epoch) and ends with the uninterrupted run's weights."""
    out = tmp_path / "run"
    cmd = _train_cmd(data_root, out, 1, "--workers", "2", "--teacher", str(step0_reference))
    cmd += ["--log-every", "1"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    seen = []
    try:
        for line in proc.stderr:  # the job's own progress: its first logged iteration
            seen.append(line)
            if re.search(r" it \d+/20 ", line):
                break
        proc.send_signal(signal.SIGTERM)
        seen += proc.stderr.readlines()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    text = "".join(seen)
    assert code == 143, text[-3000:]
    m = re.search(r"stopping step 1 on SIGTERM: saved (\S+) \(iteration (\d+)\)", text)
    assert m, text[-3000:]
    saved, iteration = Path(m[1]), int(m[2])
    assert checkpoints(out / "state")[-1] == saved and not (out / "model.pt").exists()
    assert 0 < iteration < 20
    state = safe_load(saved)
    assert state["global_iter"] == iteration
    assert (state["epoch"], state["batch"]) == divmod(iteration, 5)  # 5 iterations per epoch
    proc = _run(cmd)
    assert f"resuming step 1 from {saved}" in proc.stderr
    assert f"(iteration {iteration} of 20)" in proc.stderr
    _assert_same_weights(out / "model.pt", step1_reference)
