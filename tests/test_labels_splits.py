"""Per-step label lookup tables, image selection rules and split preparation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lgkd_core.data.labels import check_mask_values, eval_lut, remap, train_lut
from lgkd_core.data.sources import DataFileError
from lgkd_core.data.splits import (
    mask_label_sets,
    prepare_splits,
    read_ids,
    select_eval,
    select_showcase,
    select_train,
)
from lgkd_core.io import write_ids
from lgkd_core.tasks import get_task

VOC_15_1 = get_task("voc", "15-1")

# Label sets of six hand-made images and what each rule must keep (VOC 15-1: step 0 = 0..15,
# step 1 = [16], step 2 = [17]).
SETS = [
    frozenset({0, 16}),  # 0: only the step-1 class
    frozenset({0, 5, 16, 255}),  # 1: step-1 class + an old class + ignore
    frozenset({0, 16, 17}),  # 2: step-1 class + a future class (17 arrives at step 2)
    frozenset({0, 5}),  # 3: old class only
    frozenset({0, 17}),  # 4: future class only
    frozenset({255}),  # 5: nothing but ignore
]


def test_select_train_overlap_and_disjoint_hand_made():
    assert select_train(SETS, VOC_15_1, 1, overlap=True) == [0, 1, 2]
    assert select_train(SETS, VOC_15_1, 1, overlap=False) == [0, 1]
    # step 0: images with a class in 1..15; disjoint also refuses image 1 (16 is a future class)
    assert select_train(SETS, VOC_15_1, 0, overlap=True) == [1, 3]
    assert select_train(SETS, VOC_15_1, 0, overlap=False) == [3]
    # step 2: 17 is new; 16 is old, so image 2 is allowed in the disjoint protocol too
    assert select_train(SETS, VOC_15_1, 2, overlap=True) == [2, 4]
    assert select_train(SETS, VOC_15_1, 2, overlap=False) == [2, 4]


def test_select_eval_needs_a_seen_foreground_class():
    assert select_eval(SETS, VOC_15_1, 0) == [1, 3]
    assert select_eval(SETS, VOC_15_1, 1) == [0, 1, 2, 3]
    assert select_eval(SETS, VOC_15_1, 2) == [0, 1, 2, 3, 4]


def test_showcase_prefers_old_and_new_in_one_image_then_fills():
    # VOC 15-1: step-0 classes 1..15, later ones 16..20. Only image 1 holds both; then the most
    # later classes (2), then the most classes, then the index (0 before 4); returned in order.
    assert select_showcase(SETS, VOC_15_1, count=1) == [1]
    assert select_showcase(SETS, VOC_15_1, count=2) == [1, 2]
    assert select_showcase(SETS, VOC_15_1, count=4) == [0, 1, 2, 4]
    assert select_showcase(SETS, VOC_15_1, count=10) == [0, 1, 2, 3, 4]  # 5: no class
    offline = get_task("voc", "offline")  # one step: no later class, any foreground counts
    assert select_showcase(SETS, offline, count=2) == [1, 2]


def test_select_rejects_values_outside_the_dataset_naming_the_file():
    sets = [frozenset({0, 16}), frozenset({0, 42})]
    with pytest.raises(ValueError, match=r"b\.png.*\[42\]"):
        select_train(sets, VOC_15_1, 1, paths=["a.png", "b.png"])
    with pytest.raises(ValueError, match=r"#1"):
        select_eval(sets, VOC_15_1, 1)


def test_luts_on_a_hand_made_mask():
    mask = np.array([[0, 5, 16], [17, 20, 255]], dtype=np.uint8)
    # step 1 train: only background and 16 survive, old (5) and future (17, 20) become 0
    np.testing.assert_array_equal(remap(mask, train_lut(VOC_15_1, 1)), [[0, 0, 16], [0, 0, 255]])
    # step 1 eval: every seen class keeps its id, future ones become 0
    np.testing.assert_array_equal(remap(mask, eval_lut(VOC_15_1, 1)), [[0, 5, 16], [0, 0, 255]])
    # step 0 train: the base classes keep their id
    np.testing.assert_array_equal(remap(mask, train_lut(VOC_15_1, 0)), [[0, 5, 0], [0, 0, 255]])


def test_random_order_task_renumbers_classes():
    task = get_task("voc", "15-5s_b")  # step 0: [0, 12, 9, 20, 7, ...], then [17], [3], ...
    mask = np.array([12, 9, 20, 11, 17, 3, 255], dtype=np.uint8)
    # step 0: 12 -> 1, 9 -> 2, 20 -> 3, 11 (last of step 0) -> 15; 17 and 3 are future -> 0
    np.testing.assert_array_equal(remap(mask, train_lut(task, 0)), [1, 2, 3, 15, 0, 0, 255])
    # step 1 train: only 17 (channel 16) survives
    np.testing.assert_array_equal(remap(mask, train_lut(task, 1)), [0, 0, 0, 0, 16, 0, 255])
    # step 2 eval: seen classes keep their channel, 3 (step 2) -> 17
    np.testing.assert_array_equal(remap(mask, eval_lut(task, 2)), [1, 2, 3, 15, 16, 17, 255])


@pytest.mark.parametrize("name", ["15-1", "10-1", "19-1", "15-5s_k"])
def test_eval_lut_maps_order_to_positions(name):
    task = get_task("voc", name)
    for step in range(task.num_steps):
        lut = eval_lut(task, step)
        order = task.order(step)
        assert lut.dtype == np.uint8 and lut.shape == (256,)
        assert lut[order].tolist() == list(range(len(order)))
        assert all(lut[c] == 0 for c in task.future_classes(step))
        assert lut[255] == 255


def test_remap_torch_matches_numpy_and_keeps_uint8():
    rng = np.random.default_rng(0)
    mask = rng.choice([0, 3, 16, 17, 255], size=(2, 7, 9)).astype(np.uint8)
    lut = train_lut(VOC_15_1, 1)
    expected = remap(mask, lut)
    # a uint8 torch index would be read as a boolean mask; remap must not fall for that
    got = remap(torch.from_numpy(mask), lut)
    assert got.dtype == torch.uint8 and got.shape == mask.shape
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(remap(torch.from_numpy(mask).long(), lut).numpy(), expected)


def test_check_mask_values():
    check_mask_values({0, 20, 255}, VOC_15_1, "ok.png")
    with pytest.raises(ValueError, match=r"bad\.png.*\[21, 254\]"):
        check_mask_values({0, 21, 254, 255}, VOC_15_1, "bad.png")
    ade = get_task("ade", "100-50")
    check_mask_values({0, 150}, ade, "ok.png")
    with pytest.raises(ValueError, match="151"):
        check_mask_values({151}, ade, "bad.png")


# -- files -----------------------------------------------------------------------------------
def _palette_png(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="L")
    img.putpalette([(i * 37) % 256 for i in range(768)])
    img.save(path)


def test_parallel_label_sets_equal_serial(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for k in range(24):
        values = rng.choice([0, 1, 5, 16, 17, 20, 255], size=rng.integers(1, 5), replace=False)
        mask = rng.choice(values, size=(16, 20))
        paths.append(tmp_path / f"{k}.png")
        _palette_png(paths[-1], mask)
    serial = [frozenset(np.unique(np.asarray(Image.open(p))).tolist()) for p in paths]
    assert mask_label_sets(paths, workers=2) == serial
    assert mask_label_sets(paths, workers=1) == serial


def test_write_and_read_ids(tmp_path):
    path = tmp_path / "sub" / "ids.txt"
    write_ids(path, ["b", "a", "2007_000032"])
    assert read_ids(path) == ["b", "a", "2007_000032"]
    write_ids(path, [])
    assert read_ids(path) == []
    assert [p.name for p in path.parent.iterdir()] == ["ids.txt"]  # no temporary left behind


# A tiny VOC layout: (split, id, label values, (width, height))
TINY = [
    ("train", "i0", [0, 1], (20, 16)),
    ("train", "i1", [0, 1, 16], (20, 16)),
    ("train", "i2", [0, 16, 255], (24, 16)),
    ("train", "i3", [0, 20], (20, 18)),
    ("train", "i4", [0], (20, 16)),
    ("val", "v0", [0, 3], (20, 16)),
    ("val", "v1", [0, 18], (20, 16)),
    ("val", "v2", [0], (20, 16)),
]


def _tiny_voc(data_root: Path, rows=TINY, mask_size_override=None) -> Path:
    root = data_root / "PascalVOC2012"
    (root / "VOCdevkit/VOC2012/JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "list").mkdir()
    lines = {"train": [], "val": []}
    for split, image_id, values, (w, h) in rows:
        img = np.full((h, w, 3), 128, dtype=np.uint8)
        Image.fromarray(img).save(root / f"VOCdevkit/VOC2012/JPEGImages/{image_id}.jpg")
        mw, mh = (mask_size_override or {}).get(image_id, (w, h))
        mask = np.resize(np.array(values, dtype=np.uint8), mh * mw).reshape(mh, mw)
        _palette_png(root / f"SegmentationClassAug/{image_id}.png", mask)
        lines[split].append(f"/JPEGImages/{image_id}.jpg /SegmentationClassAug/{image_id}.png")
    (root / "list/train_aug.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "list/val.txt").write_text("\n".join(lines["val"]) + "\n")
    return root


@pytest.mark.parametrize(
    "overlap, train0, train1",
    [(True, ["i0", "i1"], ["i1", "i2", "i3"]), (False, ["i0"], ["i1", "i2", "i3"])],
)
def test_prepare_splits_on_tiny_voc(tmp_path, overlap, train0, train1):
    _tiny_voc(tmp_path / "data")
    out = tmp_path / "splits"
    counts = prepare_splits("voc", "15-5", tmp_path / "data", out, overlap=overlap, workers=1)
    assert read_ids(out / "step0-train.txt") == train0
    assert read_ids(out / "step1-train.txt") == train1
    assert read_ids(out / "step0-val.txt") == ["v0"]
    assert read_ids(out / "step1-val.txt") == ["v0", "v1"]
    assert counts == {0: {"train": len(train0), "val": 1}, 1: {"train": len(train1), "val": 2}}
    assert read_ids(out / "showcase.txt") == ["v0", "v1"]
    assert sorted(p.name for p in out.iterdir()) == [
        "showcase.txt",
        "step0-train.txt",
        "step0-val.txt",
        "step1-train.txt",
        "step1-val.txt",
    ]


def test_prepare_splits_rejects_bad_values_naming_the_mask(tmp_path):
    rows = [*TINY[:5], ("val", "v9", [0, 33], (20, 16))]
    _tiny_voc(tmp_path / "data", rows)
    with pytest.raises(ValueError, match=r"v9\.png.*\[33\]"):
        prepare_splits("voc", "15-5", tmp_path / "data", tmp_path / "out", workers=1)


def test_prepare_splits_rejects_size_mismatch_naming_both_files(tmp_path):
    _tiny_voc(tmp_path / "data", mask_size_override={"i3": (20, 17)})
    with pytest.raises(DataFileError, match=r"i3\.jpg is 20x18.*i3\.png is 20x17"):
        prepare_splits("voc", "15-5", tmp_path / "data", tmp_path / "out", workers=1)
