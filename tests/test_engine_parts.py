"""Sampler, schedule and checkpoint files of the engine (no model needed)."""

import math
import pickle

import pytest
import torch

from lgkd_core.engine.checkpoint import (
    CheckpointError,
    StateStore,
    atomic_torch_save,
    load_model_file,
    safe_load,
    save_model_file,
)
from lgkd_core.engine.sampling import SeededSamples, ShardedSampler
from lgkd_core.engine.schedule import make_optimizer, poly_lambda


def test_sampler_shards_cover_the_epoch_and_are_disjoint_without_padding():
    n, world = 11, 3
    shards = [list(ShardedSampler(n, r, world, shuffle=True, pad=False)) for r in range(world)]
    indices = [i for shard in shards for i, _ in shard]
    assert sorted(indices) == list(range(n))
    padded = [list(ShardedSampler(n, r, world, shuffle=True, pad=True)) for r in range(world)]
    assert {len(s) for s in padded} == {math.ceil(n / world)}


def test_sampler_epochs_differ_and_skipping_keeps_seeds():
    s = ShardedSampler(20, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert [i for i, _ in e0] != [i for i, _ in e1]
    s.set_epoch(1, start_sample=7)
    assert list(s) == e1[7:]
    # Seeds are unique within an epoch.
    assert len({seed for _, seed in e1}) == len(e1)


class _RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.rand(3)


def test_seeded_samples_are_reproducible_and_leave_global_rng_alone():
    ds = SeededSamples(_RandomItems())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(2, 1234)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, ds[(2, 1234)])
    assert not torch.equal(a, ds[(2, 1235)])


def test_poly_schedule_matches_reference_formula():
    model = torch.nn.Conv2d(2, 2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_lambda(100))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for i in (0, 1, 50, 99):
        assert lrs[i] == pytest.approx(0.01 * (1 - i / 100) ** 0.9)


def test_optimizer_groups_and_hyperparameters():
    model = torch.nn.ModuleDict(
        {"body": torch.nn.Conv2d(3, 4, 1), "head": torch.nn.Conv2d(4, 4, 1),
         "cls": torch.nn.ModuleList([torch.nn.Conv2d(4, 2, 1)])}
    )  # fmt: skip
    opt = make_optimizer(model, lr=0.001)
    assert [g["name"] for g in opt.param_groups] == ["body", "head", "cls"]
    for g in opt.param_groups:
        assert g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 1e-4
        assert g["lr"] == 0.001


def test_state_store_skips_corrupt_newest_checkpoint(tmp_path, caplog):
    store = StateStore(tmp_path / "state", keep=3)
    store.save(10, {"epoch": 1})
    newest = store.save(20, {"epoch": 2})
    newest.write_bytes(newest.read_bytes()[:40])  # truncated by a kill mid-write elsewhere
    path, state = store.latest()
    assert state["epoch"] == 1 and path.name == "ckpt-000000010.pt"
    assert "skipping unusable checkpoint" in caplog.text


def test_state_store_keeps_only_the_newest(tmp_path):
    store = StateStore(tmp_path, keep=2)
    for i in range(4):
        store.save(i, {"epoch": i})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000002.pt", "ckpt-000000003.pt"]


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-pickle",))


def test_crafted_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model_state": _Payload()}))
    with pytest.raises(CheckpointError, match=r"refusing to load|cannot read"):
        safe_load(evil)
    atomic_torch_save({"model_state": _Payload()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError):
        load_model_file(tmp_path / "evil2.pt")
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_model_file_roundtrip_and_reference_format(tmp_path):
    state = {"body.w": torch.ones(2), "cls.0.weight": torch.zeros(3, 4, 1, 1)}
    save_model_file(tmp_path / "m.pt", state, {"step": 0, "order": [0, 1, 2]})
    payload = load_model_file(tmp_path / "m.pt")
    assert payload["order"] == [0, 1, 2] and torch.equal(
        payload["model_state"]["body.w"], state["body.w"]
    )
    torch.save({"model_state": {f"module.{k}": v for k, v in state.items()}, "epoch": 30},
               tmp_path / "ref.pth")  # fmt: skip
    ref = load_model_file(tmp_path / "ref.pth")
    assert sorted(ref["model_state"]) == sorted(state)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt"):
        load_model_file(tmp_path / "junk.pt")
