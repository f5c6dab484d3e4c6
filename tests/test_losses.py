"""Losses against fixtures produced by running the reference's own functions (utils/loss.py,
train.py of Ze-Yang/LGKD) on seeded fp32 inputs, plus property tests.

The fixtures in tests/fixtures/losses/ were written by a scratch script outside the project that
imported the reference with placeholder modules for apex / inplace_abn; each holds the inputs,
the reference's loss and the gradient with respect to the student's inputs.
"""

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lgkd_core.losses.ce import cross_entropy, unbiased_cross_entropy
from lgkd_core.losses.distillation import ilt_feature_loss, kd_loss, lgkd_loss, unbiased_kd_loss
from lgkd_core.losses.objective import downsample_labels
from lgkd_core.losses.pod import local_pod_embedding, merge_new_logits, pod_loss
from lgkd_core.losses.pseudo import (
    EntropyThresholds,
    entropy_scores,
    normalized_entropy,
    pseudo_label_entropy,
    reference_histogram_median,
)

FIX = Path(__file__).parent / "fixtures" / "losses"
TOL = {"rtol": 1e-5, "atol": 1e-5}


def load(name: str) -> dict:
    return torch.load(FIX / f"{name}.pt", weights_only=False)


def value_and_grad(fn, x: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x)
    loss.backward()
    return loss.detach(), x.grad


def test_cross_entropy_with_adaptive_factor_matches_reference():
    f = load("ce")
    loss, grad = value_and_grad(
        lambda x: cross_entropy(x, f["labels"], pixel_weight=f["factor"][:, None, None]),
        f["logits"],
    )
    torch.testing.assert_close(loss, f["loss"], **TOL)
    torch.testing.assert_close(grad, f["grad"], **TOL)


def test_cross_entropy_reductions():
    f = load("ce")
    per_pixel = cross_entropy(f["logits"], f["labels"], reduction="none")
    valid = f["labels"] != 255
    assert (per_pixel[~valid] == 0).all()
    torch.testing.assert_close(cross_entropy(f["logits"], f["labels"]), per_pixel.mean())
    torch.testing.assert_close(
        cross_entropy(f["logits"], f["labels"], reduction="valid_pixels"),
        per_pixel[valid].mean(),
    )
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(f["logits"], f["labels"], reduction="mean")


def test_unbiased_cross_entropy_matches_reference():
    f = load("unce")
    loss, grad = value_and_grad(
        lambda x: unbiased_cross_entropy(x, f["labels"], f["num_old"]), f["logits"]
    )
    torch.testing.assert_close(loss, f["loss"], **TOL)
    torch.testing.assert_close(grad, f["grad"], **TOL)


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_kd_and_unbiased_kd_match_reference(alpha):
    for name, fn in (("kd", kd_loss), ("unkd", unbiased_kd_loss)):
        f = load(f"{name}_alpha{alpha}")
        loss, grad = value_and_grad(lambda x, f=f, fn=fn: fn(x, f["teacher"], alpha), f["student"])
        torch.testing.assert_close(loss, f["loss"], **TOL)
        torch.testing.assert_close(grad, f["grad"], **TOL)


@pytest.mark.parametrize(
    "name", ["lgkd_p5.0_n0.5_a1.0", "lgkd_p1.0_n20.0_a1.5", "lgkd_p1.0_n0.0_a1.0"]
)
def test_lgkd_matches_reference(name):
    f = load(name)
    labels = f["labels_small"]
    # The fixture covers every kind of pixel: background, old, new and ignored.
    assert {0, 1, 5, 6, 255} <= set(labels.unique().tolist())
    loss, grad = value_and_grad(
        lambda x: lgkd_loss(x, f["teacher"], labels, f["prev"], f["novel"], alpha=f["alpha"]),
        f["student"],
    )
    torch.testing.assert_close(loss, f["loss"], **TOL)
    torch.testing.assert_close(grad, f["grad"], **TOL)


def test_label_downsampling_matches_reference_sixteenth_nearest():
    f = load("lgkd_p5.0_n0.5_a1.0")
    small = downsample_labels(f["full_labels"], (6, 6))
    assert torch.equal(small, f["labels_small"][:, 0])
    assert torch.equal(small, f["full_labels"][:, ::16, ::16])  # top-left pixel of each cell


def test_lgkd_without_novel_weight_is_kd_against_zero_padded_teacher_on_background():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 6, 5, 5, generator=g)
    teacher = torch.randn(2, 4, 5, 5, generator=g)
    labels = torch.randint(0, 6, (2, 5, 5), generator=g)
    labels[0, 0] = 255
    prev_weight = 2.5
    got = lgkd_loss(student, teacher, labels, prev_weight, 0.0)
    # Independent form: soft cross-entropy against [softmax(teacher), 0, 0] on pixels labelled
    # background or old, summed, divided by every non-ignored pixel (novel pixels add 0).
    target = torch.cat([teacher.softmax(1), torch.zeros(2, 2, 5, 5)], dim=1)
    per_pixel = -(target * student.log_softmax(1)).sum(1)
    bg = labels < 4
    expected = prev_weight * per_pixel[bg].sum() / (labels != 255).sum()
    torch.testing.assert_close(got, expected)


def test_lgkd_novel_pixel_moves_background_mass_to_its_label():
    student = torch.randn(1, 5, 1, 1)
    teacher = torch.randn(1, 3, 1, 1)
    labels = torch.full((1, 1, 1), 4)
    q = teacher.softmax(1)[0, :, 0, 0]
    target = torch.tensor([0.0, q[1], q[2], 0.0, q[0]])
    expected = -(target * student.log_softmax(1)[0, :, 0, 0]).sum() * 3.0
    torch.testing.assert_close(lgkd_loss(student, teacher, labels, 1.0, 3.0), expected)


def test_lgkd_without_labelled_pixels_is_zero_not_nan():
    loss = lgkd_loss(
        torch.randn(1, 5, 2, 2), torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255), 1, 1
    )
    assert loss.item() == 0.0


def test_ilt_matches_reference():
    f = load("ilt")
    loss, grad = value_and_grad(lambda x: f["weight"] * ilt_feature_loss(x, f["old"]), f["new"])
    torch.testing.assert_close(loss, f["loss"], **TOL)
    torch.testing.assert_close(grad, f["grad"], **TOL)


def test_local_pod_embedding_matches_reference_with_remainder_cells():
    f = load("pod_embedding")  # width 6: scale 4 uses 1x1 cells, dropping the last 2 rows/cols
    torch.testing.assert_close(local_pod_embedding(f["x"] ** 2), f["emb"], **TOL)


@pytest.mark.parametrize("dataset", ["voc", "ade"])
def test_pod_on_six_maps_with_logits_merge_matches_reference(dataset):
    f = load(f"pod_{dataset}")
    leaves = [m.detach().clone().requires_grad_(True) for m in f["new_maps"]]
    factors = [f["pod_factor"]] * 5 + [f["logits_factor"]]
    loss = pod_loss(f["old_maps"], leaves, factors, f["num_seen"], f["num_new"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), f["loss"], **TOL)
    for got, ref in zip(leaves, f["grads"], strict=True):
        torch.testing.assert_close(got.grad, ref, **TOL)


def test_pod_schedule_and_division_by_number_of_maps():
    g = torch.Generator().manual_seed(1)
    a = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(2)]
    b = [torch.randn(2, 3, 8, 8, generator=g) for _ in range(2)]
    one = pod_loss(a[:1], b[:1], [1.0], num_seen=4, num_new=1)
    both = pod_loss(a, b, [1.0, 0.0], num_seen=16, num_new=1)  # factor 0: counted, adds nothing
    torch.testing.assert_close(both, one * 2 / 2)  # sqrt(16)/sqrt(4) = 2, then / 2 maps
    assert pod_loss(a, a, [1.0, 1.0], 4, 1).item() == 0.0


def test_merge_new_logits_sums_new_channels_into_background():
    z = torch.arange(2 * 5 * 1 * 1, dtype=torch.float32).view(2, 5, 1, 1)
    merged = merge_new_logits(z, num_old=3)
    assert merged.shape == (2, 3, 1, 1)
    assert merged[0, :, 0, 0].tolist() == [0 + 3 + 4, 1, 2]


def test_entropy_matches_reference_and_pseudo_labels_match_reference_block():
    f = load("pseudo")
    u, _ = entropy_scores(f["teacher"], f["num_seen"])
    torch.testing.assert_close(normalized_entropy(f["teacher"].softmax(1)), f["entropy"], **TOL)
    torch.testing.assert_close(u, f["entropy"] / np.log(f["num_seen"]), **TOL)
    new_labels, factor = pseudo_label_entropy(
        f["teacher"], f["labels"], f["thresholds"], f["num_seen"]
    )
    assert torch.equal(new_labels, f["new_labels"])
    torch.testing.assert_close(factor, f["factor"], **TOL)
    # Non-trivial: some background accepted, some rejected, new-class pixels untouched.
    assert 0 < factor.min() and factor.max() < 1
    new = f["labels"] == 3
    assert torch.equal(new_labels[new], f["labels"][new])


def test_entropy_thresholds_update_matches_reference_histogram_and_thresholds():
    f = load("median_small")
    acc = EntropyThresholds(f["num_old"], num_seen=f["num_seen"], bins=100)
    for logits, labels in zip(f["logits"], f["labels"], strict=True):
        acc.update(logits, labels)
    assert torch.equal(acc.hist, f["hist"])
    torch.testing.assert_close(acc.compute(floor=0.001), f["thresholds"], **TOL)


@pytest.mark.parametrize("name", ["median_big", "median_spread"])
def test_reference_median_on_reference_histograms(name):
    f = load(name)
    got = reference_histogram_median(f["hist"]).clamp(min=0.001)
    torch.testing.assert_close(got, f["thresholds"], **TOL)


def test_reference_median_cases():
    f = load("median_big")
    thr = f["thresholds"]
    assert f["hist"][1].sum() >= 9702 and thr[1] == float("inf")  # loop runs out: +inf
    assert 0.005 <= thr[2] <= 0.01  # bin 0 holds half: interpolation inside bin 0
    assert 0.02 <= thr[0] < 0.03  # a later bin holds enough: inside bin 2
    # Below 9702 spread pixels the loop ends with a negative numerator: -inf, floored.
    hist = torch.zeros(1, 100, dtype=torch.int64)
    hist[0, :5] = 100
    assert reference_histogram_median(hist)[0] == float("-inf")
    acc = EntropyThresholds(1, num_seen=2)
    acc.hist = hist
    assert acc.compute(floor=0.001)[0] == pytest.approx(0.001)
    # Python's float rounding makes position 29 read bin 28 (int(0.29 * 100) == 28).
    assert int(29 / 100 * 100) == 28


def test_exact_median_equals_numpy_median():
    g = torch.Generator().manual_seed(5)
    for n_pixels in (7, 8, 501):  # odd and even counts per class
        logits = torch.randn(1, 3, 1, n_pixels, generator=g) * 3
        labels = torch.zeros(1, 1, n_pixels, dtype=torch.long)
        acc = EntropyThresholds(3, num_seen=5, method="exact", compact_every=64)
        for chunk in range(0, n_pixels, 50):  # several updates, compaction in between
            acc.update(logits[..., chunk : chunk + 50], labels[..., chunk : chunk + 50])
        u, pred = entropy_scores(logits, 5)
        for c in range(3):
            values = u[pred == c].numpy().astype(np.float64)
            expected = float(np.median(values)) if values.size else 0.0
            assert acc.medians()[c].item() == pytest.approx(expected, rel=1e-6, abs=1e-9)
        med = acc.medians()
        torch.testing.assert_close(acc.compute(floor=0.001), med.clamp(min=0.001))


def test_exact_median_with_duplicates():
    acc = EntropyThresholds(1, num_seen=2, method="exact", compact_every=1)
    values = [0.3, 0.1, 0.1, 0.2, 0.1, 0.4]
    acc._pending[0].append(torch.tensor(values))
    acc._pending_size = len(values)
    acc._compact()
    acc._pending[0].append(torch.tensor([0.4, 0.4]))
    assert acc.medians()[0].item() == pytest.approx(float(np.median([*values, 0.4, 0.4])))


def test_unknown_median_method_is_rejected():
    with pytest.raises(ValueError, match="reference, exact"):
        EntropyThresholds(3, method="histogram")
    with pytest.raises(ValueError, match="num_seen"):
        EntropyThresholds(3).update(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_losses_are_fp32_from_half_inputs():
    student = torch.randn(2, 5, 4, 4).bfloat16()
    teacher = torch.randn(2, 3, 4, 4).bfloat16()
    labels = torch.randint(0, 5, (2, 4, 4))
    for loss in (
        cross_entropy(student, labels),
        unbiased_cross_entropy(student, labels, 3),
        kd_loss(student, teacher),
        unbiased_kd_loss(student, teacher),
        lgkd_loss(student, teacher, labels, 1.0, 1.0),
        pod_loss([teacher], [student], [1.0], 5, 2),
    ):
        assert loss.dtype == torch.float32


def _rank_data(rank: int):
    g = torch.Generator().manual_seed(40 + rank)
    logits = torch.randn(2, 3, 8, 8, generator=g) * (3 + rank)
    labels = torch.randint(0, 2, (2, 8, 8), generator=g)
    return logits, labels


def _thresholds_worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        result = {}
        for method in ("reference", "exact"):
            acc = EntropyThresholds(3, num_seen=4, method=method)
            acc.update(*_rank_data(rank))
            acc.all_reduce()
            result[method] = acc.compute()
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_reduce_gives_every_rank_the_thresholds_of_the_pooled_data(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "thr")
    mp.spawn(_thresholds_worker, args=(2, port, out), nprocs=2, join=True)
    for method in ("reference", "exact"):
        pooled = EntropyThresholds(3, num_seen=4, method=method)
        for rank in range(2):
            pooled.update(*_rank_data(rank))
        for rank in range(2):
            got = torch.load(f"{out}.{rank}")[method]
            torch.testing.assert_close(got, pooled.compute(), rtol=0, atol=0)


def test_pod_refuses_maps_smaller_than_the_finest_grid():
    with pytest.raises(ValueError, match="crop size"):
        pod_loss([torch.randn(1, 2, 3, 3)], [torch.randn(1, 2, 3, 3)], [1.0], 2, 1)
