"""Streaming confusion matrix, IoU and the bg/old/new/all summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lgkd_core.metrics import ConfusionMatrix
from lgkd_core.tasks import get_task

from helpers import free_port


def _numpy_confusion(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if t < n:  # 255 and out-of-range targets are not counted
            m[t, p] += 1
    return m


def _random_batch(rng, n: int, shape=(3, 17, 19)):
    target = rng.integers(0, n, size=shape)
    target[rng.random(shape) < 0.1] = 255
    target[rng.random(shape) < 0.02] = n + 3  # beyond the classifier: skipped
    pred = np.where(rng.random(shape) < 0.6, np.minimum(target, n - 1), rng.integers(0, n, shape))
    return pred, target


def test_matrix_and_scores_match_numpy_on_random_batches():
    rng = np.random.default_rng(0)
    n = 7
    cm = ConfusionMatrix(n)
    expected = np.zeros((n, n), dtype=np.int64)
    for _ in range(4):
        pred, target = _random_batch(rng, n)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))
        expected += _numpy_confusion(pred, target, n)
    assert cm.matrix.dtype == torch.int64
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    tp, gt, pr = np.diag(expected), expected.sum(1), expected.sum(0)
    iou = cm.class_iou()
    assert iou.dtype == torch.float64
    np.testing.assert_allclose(iou.numpy(), tp / (gt + pr - tp))
    np.testing.assert_allclose(cm.class_accuracy().numpy(), tp / gt)
    assert cm.overall_accuracy() == pytest.approx(tp.sum() / expected.sum())
    cm.reset()
    assert int(cm.matrix.sum()) == 0


def test_absent_classes_are_nan_and_out_of_range_predictions_refused():
    cm = ConfusionMatrix(4)
    target = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 3, 1, 2]]])  # class 3 predicted but absent from the ground truth
    cm.update(pred, target)
    iou = cm.class_iou()
    assert iou[0] == pytest.approx(0.5) and iou[1] == 1.0
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert math.isnan(cm.class_accuracy()[3])
    with pytest.raises(ValueError, match="num_classes"):
        cm.update(torch.tensor([[[4]]]), torch.tensor([[[0]]]))
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    assert math.isnan(ConfusionMatrix(3).overall_accuracy())


def _hand_matrix() -> torch.Tensor:
    """VOC 15-1 step 1 (17 channels): every base class perfect except 3 (absent);
    background and class 16 confuse 2 pixels each way."""
    m = torch.zeros(17, 17, dtype=torch.int64)
    for c in range(1, 16):
        m[c, c] = 0 if c == 3 else 10
    m[0, 0], m[0, 16] = 6, 2  # bg: gt 8, pred 8, tp 6 -> IoU 6/10
    m[16, 16], m[16, 0] = 4, 2  # 16: gt 6, pred 6, tp 4 -> IoU 4/8
    return m


def test_summary_groups_on_a_hand_made_matrix():
    task = get_task("voc", "15-1")
    cm = ConfusionMatrix(17)
    cm.matrix += _hand_matrix()
    s = cm.summary(task, 1)
    assert s["background"] == pytest.approx(0.6)
    assert s["old"] == pytest.approx(1.0)  # 14 classes with ground truth, all perfect
    assert s["old_bg"] == pytest.approx((0.6 + 14) / 15)
    assert s["new"] == pytest.approx(0.5)
    assert s["all"] == pytest.approx((0.6 + 14 + 0.5) / 16)
    with pytest.raises(ValueError, match="17 classes"):
        cm.summary(task, 2)


def test_summary_at_step_zero_has_no_new_classes_and_json_uses_names():
    task = get_task("voc", "15-5s_b")  # channel 1 = dog (12), channel 16 = sheep (17) at step 1
    cm = ConfusionMatrix(16)
    cm.update(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, 2]]))
    s = cm.summary(task, 0)
    assert math.isnan(s["new"])
    assert s["background"] == 1.0
    assert s["old"] == pytest.approx((0.5 + 0.5) / 2)
    d = cm.to_dict(task, 0)
    text = json.dumps(d, allow_nan=False)  # no NaN leaks into the JSON
    assert json.loads(text)["summary"]["new"] is None
    assert d["class_iou"]["dog"] == pytest.approx(0.5) and d["class_iou"]["chair"] == 0.5
    assert d["class_iou"]["tvmonitor"] is None  # channel 3, no ground truth
    assert list(d["class_iou"])[:3] == ["background", "dog", "chair"]
    assert d["confusion_matrix"][2] == [0, 1, 1] + [0] * 13
    assert d["overall_accuracy"] == pytest.approx(0.75)


def test_all_reduce_is_a_noop_without_a_process_group():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[1]]), torch.tensor([[1]]))
    cm.all_reduce()
    assert cm.matrix.tolist() == [[0, 0], [0, 1]]


def _rank_batch(rank: int, n: int):
    pred, target = _random_batch(np.random.default_rng(100 + rank), n, shape=(2, 5, 6))
    return torch.from_numpy(pred), torch.from_numpy(target)


def _reduce_worker(rank: int, world: int, port: int, n: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        cm = ConfusionMatrix(n)
        cm.update(*_rank_batch(rank, n))
        cm.all_reduce()
        torch.save(cm.matrix, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_two_gloo_ranks(tmp_path):
    n = 5
    out = str(tmp_path / "matrix")
    mp.spawn(_reduce_worker, args=(2, free_port(), n, out), nprocs=2, join=True)
    expected = np.zeros((n, n), dtype=np.int64)
    for rank in range(2):
        pred, target = _rank_batch(rank, n)
        expected += _numpy_confusion(pred.numpy(), target.numpy(), n)
    for rank in range(2):
        np.testing.assert_array_equal(torch.load(f"{out}.{rank}").numpy(), expected)
