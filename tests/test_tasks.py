import pytest

from lgkd_core.tasks import get_task, list_tasks


def test_voc_15_1_matches_reference_lists():
    task = get_task("voc", "15-1")
    assert task.steps == get_task("voc", "15-5s").steps
    assert task.num_steps == 6
    assert task.new_classes(0) == list(range(16))
    assert [task.new_classes(s) for s in range(1, 6)] == [[16], [17], [18], [19], [20]]
    assert task.old_classes(3) == list(range(18))
    assert task.classes_per_step(3) == [16, 1, 1, 1]
    assert task.base_classes() == list(range(1, 16))


def test_random_order_is_renumbered_in_learning_order():
    task = get_task("voc", "15-5s_b")
    assert task.order(0) == [0, 12, 9, 20, 7, 15, 8, 14, 16, 5, 19, 4, 1, 13, 2, 11]
    assert task.order(2) == [*task.order(0), 17, 3]
    # Every random order is a permutation of the 21 VOC classes.
    for name in list_tasks("voc"):
        if name.startswith("15-5s_"):
            t = get_task("voc", name)
            assert sorted(t.order(5)) == list(range(21)), name
    assert sum(n.startswith("15-5s_") for n in list_tasks("voc")) == 22


@pytest.mark.parametrize(
    ("dataset", "name", "layout"),
    [
        ("voc", "19-1", [20, 1]),
        ("voc", "15-5", [16, 5]),
        ("voc", "10-1", [11] + [1] * 10),
        ("ade", "100-50", [101, 50]),
        ("ade", "100-10", [101] + [10] * 5),
        ("ade", "100-5", [101] + [5] * 10),
        ("ade", "50-50", [51, 50, 50]),
        ("ade", "offline", [151]),
    ],
)
def test_classifier_layouts(dataset, name, layout):
    task = get_task(dataset, name)
    assert task.classes_per_step(task.num_steps - 1) == layout
    assert sorted(task.order(task.num_steps - 1)) == list(range(sum(layout)))


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match=r"valid tasks: .*15-1"):
        get_task("voc", "15-2")
    with pytest.raises(ValueError, match="valid datasets: ade, synthetic, voc"):
        get_task("cityscapes", "15-1")
    with pytest.raises(ValueError, match="out of range"):
        get_task("voc", "19-1").new_classes(2)
