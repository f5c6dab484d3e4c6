"""The pure-PyTorch ABN synchronised over a real 2-process gloo group equals one process on the
concatenated batch (outputs, input and weight gradients, running statistics)."""

from __future__ import annotations

import gc
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lgkd_core.models.norm import ABN

WORLD = 2
CHANNELS = 5
BATCH = (2, 3)  # different per-rank batch sizes: the counts must be all-reduced too
STEPS = 2  # two training steps: running statistics follow the momentum twice


def _inputs(activation: str):
    """Per-rank inputs, upstream gradients and the shared affine parameters (seeded)."""
    g = torch.Generator().manual_seed(7 if activation == "leaky_relu" else 8)
    xs = [
        [torch.randn(b, CHANNELS, 6, 4, generator=g) * 3 + 1.5 for b in BATCH] for _ in range(STEPS)
    ]
    grads = [[torch.randn(b, CHANNELS, 6, 4, generator=g) for b in BATCH] for _ in range(STEPS)]
    weight = torch.rand(CHANNELS, generator=g) + 0.5
    bias = torch.randn(CHANNELS, generator=g)
    return xs, grads, weight, bias


def _layer(activation: str, weight: torch.Tensor, bias: torch.Tensor) -> ABN:
    layer = ABN(CHANNELS, activation=activation)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.train()


def _run(layer: ABN, xs, grads, channels_last: bool) -> dict:
    """STEPS forward/backward passes; returns outputs, input grads and accumulated param grads."""
    outs, xgrads = [], []
    for x, g in zip(xs, grads, strict=True):
        x = x.clone()
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_(True)
        y = layer(x)
        (y * g).sum().backward()
        outs.append(y.detach().contiguous())
        xgrads.append(x.grad.contiguous())
    return {
        "out": outs,
        "xgrad": xgrads,
        "wgrad": layer.weight.grad.clone(),
        "bgrad": layer.bias.grad.clone(),
        "running_mean": layer.running_mean.clone(),
        "running_var": layer.running_var.clone(),
        "num_batches_tracked": layer.num_batches_tracked.clone(),
    }


def _worker(rank: int, store_path: str, out_dir: str, activation: str, channels_last: bool):
    store = dist.FileStore(store_path, WORLD)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    try:
        xs, grads, weight, bias = _inputs(activation)
        layer = _layer(activation, weight, bias)
        result = _run(layer, [x[rank] for x in xs], [g[rank] for g in grads], channels_last)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        # Release everything and collect before leaving the group: gloo otherwise crashes at
        # exit now and then ('terminate called without an active exception').
        layer = result = xs = grads = None
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("activation", "channels_last"), [("leaky_relu", False), ("identity", True)]
)
def test_two_process_abn_equals_one_process_on_joined_batch(tmp_path, activation, channels_last):
    mp.spawn(
        _worker,
        args=(str(tmp_path / "store"), str(tmp_path), activation, channels_last),
        nprocs=WORLD,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    xs, grads, weight, bias = _inputs(activation)
    single = _run(
        _layer(activation, weight, bias),
        [torch.cat(x) for x in xs],
        [torch.cat(g) for g in grads],
        channels_last=False,
    )
    tol = {"rtol": 1e-6, "atol": 1e-6}
    for s in range(STEPS):
        torch.testing.assert_close(torch.cat([r["out"][s] for r in ranks]), single["out"][s], **tol)
        torch.testing.assert_close(
            torch.cat([r["xgrad"][s] for r in ranks]), single["xgrad"][s], **tol
        )
    # DDP sums (then averages) parameter gradients over ranks: the sum is the joined gradient
    # (sums of a few hundred float32 terms in another order: relative 1e-5).
    sum_tol = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(sum(r["wgrad"] for r in ranks), single["wgrad"], **sum_tol)
    torch.testing.assert_close(sum(r["bgrad"] for r in ranks), single["bgrad"], **sum_tol)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], single["running_mean"], **tol)
        torch.testing.assert_close(r["running_var"], single["running_var"], **tol)
        assert int(r["num_batches_tracked"]) == STEPS
    # The per-rank batch alone would give different statistics: the sync did something.
    alone = _run(_layer(activation, weight, bias), [x[0] for x in xs], [g[0] for g in grads], False)
    assert not torch.allclose(alone["out"][0], ranks[0]["out"][0], atol=1e-3)
