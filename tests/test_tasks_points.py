"""Point-cloud tasks (3DPC-CISS settings, S0 and S1 orders) and the stored label -> model id
tables: ScanNet's unannotated ignored at step 0 and background later, other classes
collapsed into background."""

import numpy as np
import pytest

from lgkd_core.data.points_classes import S3DIS_CLASSES, SCANNET_CLASSES
from lgkd_core.tasks import (
    DATASET_CLASSES,
    get_task,
    is_point_dataset,
    list_datasets,
    list_tasks,
    point_label_lut,
)


def test_datasets_and_class_names():
    assert list_datasets("image") == ["ade", "synthetic", "voc"]
    assert list_datasets("points") == ["s3dis", "scannet", "synthetic3d"]
    assert is_point_dataset("scannet") and not is_point_dataset("voc")
    # ScanNet: stored label = task id (unannotated, stored 0, leaves 0 to background).
    assert DATASET_CLASSES["scannet"] == ("background", *SCANNET_CLASSES[1:])
    assert DATASET_CLASSES["s3dis"] == ("background", *S3DIS_CLASSES)
    with pytest.raises(ValueError, match="point clouds: s3dis, scannet, synthetic3d"):
        list_tasks("kitti")


@pytest.mark.parametrize(
    ("dataset", "name", "layout"),
    [
        ("scannet", "19-1", [20, 1]),
        ("scannet", "17-3", [18, 3]),
        ("scannet", "15-5", [16, 5]),
        ("scannet", "15-1", [16, 1, 1, 1, 1, 1]),
        ("scannet", "offline", [21]),
        ("s3dis", "12-1", [13, 1]),
        ("s3dis", "10-3", [11, 3]),
        ("s3dis", "8-5", [9, 5]),
        ("s3dis", "8-1_s1", [9, 1, 1, 1, 1, 1]),
        ("s3dis", "joint", [14]),
        ("synthetic3d", "5-1", [6, 1, 1, 1, 1, 1]),
        ("synthetic3d", "9-1_s1", [10, 1]),
    ],
)
def test_layouts(dataset, name, layout):
    task = get_task(dataset, name)
    last = task.num_steps - 1
    assert task.classes_per_step(last) == layout
    assert sorted(task.order(last)) == list(range(sum(layout)))


def test_protocol_orders():
    names = DATASET_CLASSES["scannet"]
    t = get_task("scannet", "15-5")
    assert [names[c] for c in t.new_classes(1)] == [
        "shower curtain", "refrigerator", "picture", "cabinet", "otherfurniture",
    ]  # fmt: skip
    assert t.base_classes() == list(range(1, 16))
    assert [names[c] for c in get_task("scannet", "19-1_s1").new_classes(1)] == ["window"]
    s1 = get_task("scannet", "15-1_s1")
    seen = [names[c] for c in s1.order(s1.num_steps - 1)[1:]]
    assert seen == sorted(seen)
    s3 = DATASET_CLASSES["s3dis"]
    assert [s3[c] for c in get_task("s3dis", "8-5").new_classes(1)] == [
        "chair", "sofa", "bookcase", "board", "clutter",
    ]  # fmt: skip


def test_scannet_label_tables():
    task = get_task("scannet", "15-5")
    step0, step1 = point_label_lut(task, 0), point_label_lut(task, 1)
    assert step0.dtype == np.uint8 and step0.shape == (256,)
    assert step0[0] == 255  # unannotated: ignored at step 0
    assert list(step0[1:16]) == list(range(1, 16)) and list(step0[16:21]) == [0] * 5
    assert step1[0] == 0  # unannotated: background later
    assert list(step1[1:16]) == [0] * 15 and list(step1[16:21]) == list(range(16, 21))
    evals = point_label_lut(task, 1, "eval")
    assert evals[0] == 0 and list(evals[1:21]) == list(range(1, 21))
    assert list(point_label_lut(task, 0, "eval")[16:21]) == [0] * 5
    assert (step0[21:] == 255).all()  # not a stored label
    offline = point_label_lut(get_task("scannet", "offline"), 0)
    assert offline[0] == 255 and list(offline[1:21]) == list(range(1, 21))


def test_s3dis_and_reordered_tables():
    task = get_task("s3dis", "8-1")
    lut = point_label_lut(task, 2)  # step 2 learns stored 9 (sofa), task id 10
    assert lut[9] == 10 and int((lut[:13] != 0).sum()) == 1
    assert list(point_label_lut(task, 0)[:8]) == list(range(1, 9))
    s1 = get_task("scannet", "19-1_s1")
    lut = point_label_lut(s1, 0)
    order = s1.order(0)
    for stored in range(1, 21):
        expected = order.index(stored) if stored in order else 0
        assert lut[stored] == expected
    with pytest.raises(ValueError, match="not a point-cloud dataset"):
        point_label_lut(get_task("voc", "15-5"), 0)
    with pytest.raises(ValueError, match="split"):
        point_label_lut(task, 0, "test")
