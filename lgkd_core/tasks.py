"""Datasets' class lists and every incremental setting, as data.

A *task* maps each step to the classes (original dataset ids) learned at that step; step 0
includes the background (0). The model's output channel ``k`` at step ``t`` is the ``k``-th class
of ``order(t)`` = step-0 classes, then each later step's classes in turn.

Point clouds (``scannet``, ``s3dis``, ``synthetic3d``; the 3DPC-CISS protocol) use the same
layout, over *task ids* that add a background 0 to the labels stored in the blocks (see
:class:`PointLabels` and :func:`point_label_lut`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lgkd_core.data.points_classes import S3DIS_CLASSES, SCANNET_CLASSES
from lgkd_core.data.synthetic3d import SYNTHETIC3D_CLASSES

if TYPE_CHECKING:
    import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# ADE20k objectInfo150 order; 0 is "other" (treated as background).
ADE_CLASSES: tuple[str, ...] = (
    "background", "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain",
    "plant", "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river",
    "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# The embedded dataset: 20 procedurally drawn object kinds plus background (VOC-sized label space).
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "background", "red_disc", "green_square", "blue_triangle", "yellow_ring", "cyan_cross",
    "magenta_diamond", "orange_hstripes", "purple_vstripes", "white_checker", "gray_dots",
    "lime_star", "teal_hexagon", "pink_ellipse", "brown_frame", "navy_plus", "olive_bar",
    "maroon_half_disc", "coral_pentagon", "gold_grid", "sky_arrow",
)  # fmt: skip

DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    "voc": VOC_CLASSES,
    "ade": ADE_CLASSES,
    "synthetic": SYNTHETIC_CLASSES,
}

_VOC_RANDOM_ORDERS_15_1: dict[str, tuple[list[int], list[int]]] = {
    # name: (step-0 classes incl. background, the five classes of steps 1..5), from the reference.
    "15-5s_b": ([0, 12, 9, 20, 7, 15, 8, 14, 16, 5, 19, 4, 1, 13, 2, 11], [17, 3, 6, 18, 10]),
    "15-5s_c": ([0, 13, 19, 15, 17, 9, 8, 5, 20, 4, 3, 10, 11, 18, 16, 7], [12, 14, 6, 1, 2]),
    "15-5s_d": ([0, 15, 3, 2, 12, 14, 18, 20, 16, 11, 1, 19, 8, 10, 7, 17], [6, 5, 13, 9, 4]),
    "15-5s_e": ([0, 7, 5, 3, 9, 13, 12, 14, 19, 10, 2, 1, 4, 16, 8, 17], [15, 18, 6, 11, 20]),
    "15-5s_f": ([0, 7, 13, 5, 11, 9, 2, 15, 12, 14, 3, 20, 1, 16, 4, 18], [8, 6, 10, 19, 17]),
    "15-5s_g": ([0, 7, 5, 9, 1, 15, 18, 14, 3, 20, 10, 4, 19, 11, 17, 16], [12, 8, 6, 2, 13]),
    "15-5s_h": ([0, 12, 9, 19, 6, 4, 10, 5, 18, 14, 15, 16, 3, 8, 7, 11], [13, 2, 20, 17, 1]),
    "15-5s_i": ([0, 13, 10, 15, 8, 7, 19, 4, 3, 16, 12, 14, 11, 5, 20, 6], [2, 18, 9, 17, 1]),
    "15-5s_j": ([0, 1, 14, 9, 5, 2, 15, 8, 20, 6, 16, 18, 7, 11, 10, 19], [3, 4, 17, 12, 13]),
    "15-5s_k": ([0, 16, 13, 1, 11, 12, 18, 6, 14, 5, 3, 7, 9, 20, 19, 15], [4, 2, 10, 8, 17]),
    "15-5s_l": ([0, 10, 7, 6, 19, 16, 8, 17, 1, 14, 4, 9, 3, 15, 11, 12], [2, 18, 20, 13, 5]),
    "15-5s_m": ([0, 18, 4, 14, 17, 12, 10, 7, 3, 9, 1, 8, 15, 6, 13, 2], [5, 11, 20, 16, 19]),
    "15-5s_n": ([0, 5, 4, 13, 18, 14, 10, 19, 15, 7, 9, 3, 2, 8, 16, 20], [1, 12, 11, 6, 17]),
    "15-5s_o": ([0, 9, 12, 13, 18, 7, 1, 15, 17, 10, 8, 4, 5, 20, 16, 6], [14, 19, 11, 2, 3]),
    "15-5s_p": ([0, 9, 12, 13, 18, 2, 11, 15, 17, 10, 8, 4, 5, 20, 16, 6], [14, 19, 1, 7, 3]),
    "15-5s_q": ([0, 3, 14, 13, 18, 2, 11, 15, 17, 10, 8, 4, 5, 20, 16, 6], [12, 19, 1, 7, 9]),
    "15-5s_r": ([0, 3, 14, 13, 1, 2, 11, 15, 17, 7, 8, 4, 5, 9, 16, 19], [12, 6, 18, 10, 20]),
    "15-5s_s": ([0, 3, 14, 6, 1, 2, 11, 12, 17, 7, 20, 4, 5, 9, 16, 19], [15, 13, 18, 10, 8]),
    "15-5s_t": ([0, 3, 15, 13, 1, 2, 11, 18, 17, 7, 20, 8, 5, 9, 16, 19], [14, 6, 12, 10, 4]),
    "15-5s_u": ([0, 3, 15, 13, 14, 6, 11, 18, 17, 7, 20, 8, 4, 9, 16, 10], [1, 2, 12, 19, 5]),
    "15-5s_v": ([0, 1, 2, 12, 14, 6, 19, 18, 17, 5, 20, 8, 4, 9, 16, 10], [3, 15, 13, 11, 7]),
    "15-5s_w": ([0, 1, 2, 12, 14, 13, 19, 18, 7, 11, 20, 8, 4, 9, 16, 10], [3, 15, 6, 5, 17]),
}


def _range(a: int, b: int) -> list[int]:
    """Inclusive integer range [a, b]."""
    return list(range(a, b + 1))


def _voc_tasks() -> dict[str, list[list[int]]]:
    tasks = {
        "offline": [_range(0, 20)],
        "19-1": [_range(0, 19), [20]],
        "15-5": [_range(0, 15), _range(16, 20)],
        "15-5s": [_range(0, 15), [16], [17], [18], [19], [20]],
        "10-1": [_range(0, 10)] + [[c] for c in range(11, 21)],
    }
    tasks["15-1"] = tasks["15-5s"]
    for name, (first, later) in _VOC_RANDOM_ORDERS_15_1.items():
        tasks[name] = [first] + [[c] for c in later]
    return tasks


def _ade_tasks() -> dict[str, list[list[int]]]:
    tasks = {
        "offline": [_range(0, 150)],
        "100-50": [_range(0, 100), _range(101, 150)],
        "100-10": [_range(0, 100)] + [_range(101 + 10 * i, 110 + 10 * i) for i in range(5)],
        "100-5": [_range(0, 100)] + [_range(101 + 5 * i, 105 + 5 * i) for i in range(10)],
        "50": [_range(0, 50), _range(51, 100), _range(101, 150)],
    }
    tasks["50-50"] = tasks["50"]
    return tasks


# -- point clouds ---------------------------------------------------------------------------
#
# The stored labels of a point-cloud dataset have no background: they index the dataset's own
# class list (ScanNet: 0 unannotated, 1 wall, ..., 20 otherfurniture; S3DIS: 0 ceiling, ...,
# 12 clutter). The protocol trains step t on labels "step-t classes -> 1..k in list order,
# everything else -> 0 (background)", and ignores ScanNet's unannotated in the step-0 loss.
# Here every annotated stored label r gets the task id r + offset (offset 1 for S3DIS and
# synthetic3d, 0 for ScanNet, whose unannotated 0 is no class and leaves id 0 free), id 0 is the
# background, and the tasks are written over task ids as for images. The protocol's label j
# (1..k) of step t is then model id num_old + j - 1 = the class's position in order(t): the same
# per-step classifiers, with background and the old classes in front of the new ones.
# point_label_lut builds the stored label -> model id table of a step.


@dataclass(frozen=True)
class PointLabels:
    """How the labels stored in a point-cloud dataset's blocks relate to task ids.

    ``stored``: class names indexed by stored label; task id = stored label + ``offset``;
    ``unannotated``: the stored label that is no class (ScanNet's 0), or None.
    """

    stored: tuple[str, ...]
    offset: int
    unannotated: int | None = None

    def task_id(self, label: int) -> int | None:
        """Task id of a stored label (None for unannotated)."""
        return None if label == self.unannotated else label + self.offset

    @property
    def task_classes(self) -> tuple[str, ...]:
        """Names by task id: ``background``, then the annotated classes."""
        names = ["background"] * (len(self.stored) + self.offset)
        for label, name in enumerate(self.stored):
            tid = self.task_id(label)
            if tid is not None:
                names[tid] = name
        return tuple(names[: max(self.annotated_ids()) + 1])

    def annotated_ids(self) -> list[int]:
        """Task ids of the annotated classes, in stored-label order (the protocol's S0)."""
        return [t for t in (self.task_id(r) for r in range(len(self.stored))) if t is not None]


POINT_LABELS: dict[str, PointLabels] = {
    "scannet": PointLabels(SCANNET_CLASSES, offset=0, unannotated=0),
    "s3dis": PointLabels(S3DIS_CLASSES, offset=1),
    "synthetic3d": PointLabels(SYNTHETIC3D_CLASSES, offset=1),
}
for _name, _labels in POINT_LABELS.items():
    DATASET_CLASSES[_name] = _labels.task_classes


def _point_orders(labels: PointLabels) -> dict[str, list[int]]:
    """The two class orders of the protocol, as task ids: ``""`` = S0, the stored-label order;
    ``"_s1"`` = S1, alphabetical by class name."""
    s0 = labels.annotated_ids()
    names = labels.task_classes
    return {"": s0, "_s1": sorted(s0, key=lambda t: names[t])}


def _point_tasks(labels: PointLabels, settings: list[tuple[int, int]]) -> dict:
    """``"a-b"`` (and ``"a-b_s1"`` in the S1 order): the first ``a`` classes of the order at
    step 0 (with background), then steps of ``b`` classes until all are learned (``15-5``: one
    step of 5; ``15-1``: five steps of 1). ``offline`` / ``joint``: every class at once."""
    orders = _point_orders(labels)
    tasks = {"offline": [[0, *orders[""]]]}
    tasks["joint"] = tasks["offline"]
    for suffix, ids in orders.items():
        for base, size in settings:
            if not 0 < base < len(ids):
                raise ValueError(f"bad point-cloud setting {base}-{size} for {len(ids)} classes")
            steps = [[0, *ids[:base]]] + [ids[i : i + size] for i in range(base, len(ids), size)]
            tasks[f"{base}-{size}{suffix}"] = steps
    return tasks


POINT_TASKS: dict[str, dict[str, list[list[int]]]] = {
    "scannet": _point_tasks(POINT_LABELS["scannet"], [(19, 1), (17, 3), (15, 5), (15, 1)]),
    "s3dis": _point_tasks(POINT_LABELS["s3dis"], [(12, 1), (10, 3), (8, 5), (8, 1)]),
    "synthetic3d": _point_tasks(POINT_LABELS["synthetic3d"], [(9, 1), (7, 3), (5, 5), (5, 1)]),
}

IMAGE_TASKS: dict[str, dict[str, list[list[int]]]] = {
    "voc": _voc_tasks(),
    "ade": _ade_tasks(),
    # The embedded dataset has VOC's label space, so it shares VOC's settings.
    "synthetic": _voc_tasks(),
}
TASKS: dict[str, dict[str, list[list[int]]]] = {**IMAGE_TASKS, **POINT_TASKS}


@dataclass(frozen=True)
class Task:
    """One incremental setting of one dataset.

    ``steps[t]`` lists the original class ids learned at step ``t`` (step 0 includes 0).
    """

    dataset: str
    name: str
    steps: tuple[tuple[int, ...], ...]

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the dataset's classes, indexed by original id."""
        return DATASET_CLASSES[self.dataset]

    @property
    def num_dataset_classes(self) -> int:
        return len(self.class_names)

    def _check_step(self, step: int) -> None:
        if not 0 <= step < self.num_steps:
            raise ValueError(
                f"step {step} is out of range for task {self.dataset}/{self.name}, "
                f"which has steps 0..{self.num_steps - 1}"
            )

    def new_classes(self, step: int) -> list[int]:
        """Original ids learned at ``step`` (includes background at step 0)."""
        self._check_step(step)
        return list(self.steps[step])

    def old_classes(self, step: int) -> list[int]:
        """Original ids learned before ``step`` (background included), in learning order."""
        self._check_step(step)
        return [c for s in self.steps[:step] for c in s]

    def classes_seen(self, step: int) -> list[int]:
        """Original ids learned up to and including ``step``, in the model's output order."""
        return self.old_classes(step) + self.new_classes(step)

    def order(self, step: int) -> list[int]:
        """Original id of each output channel of the step-``step`` model."""
        return self.classes_seen(step)

    def future_classes(self, step: int) -> list[int]:
        """Original ids learned after ``step``."""
        self._check_step(step)
        return [c for s in self.steps[step + 1 :] for c in s]

    def classes_per_step(self, step: int) -> list[int]:
        """Classifier layout at ``step``: channels of ``cls.0`` .. ``cls.step``."""
        self._check_step(step)
        return [len(s) for s in self.steps[: step + 1]]

    def num_classes(self, step: int) -> int:
        """Output channels of the step-``step`` model."""
        return sum(self.classes_per_step(step))

    def base_classes(self) -> list[int]:
        """Step-0 foreground classes (the summaries' ``old`` group)."""
        return [c for c in self.steps[0] if c != 0]

    def channel_names(self, step: int) -> list[str]:
        """Class name of each output channel of the step-``step`` model."""
        return [self.class_names[c] for c in self.order(step)]


def list_datasets(modality: str | None = None) -> list[str]:
    """Dataset names: ``modality`` ``"image"``, ``"points"`` or None (both)."""
    if modality is None:
        return sorted(TASKS)
    if modality not in ("image", "points"):
        raise ValueError(f"modality must be 'image', 'points' or None, got {modality!r}")
    return sorted(IMAGE_TASKS if modality == "image" else POINT_TASKS)


def is_point_dataset(dataset: str) -> bool:
    return dataset in POINT_TASKS


def list_tasks(dataset: str) -> list[str]:
    if dataset not in TASKS:
        raise ValueError(
            f"unknown dataset {dataset!r}; valid datasets: {', '.join(list_datasets('image'))}; "
            f"point clouds: {', '.join(list_datasets('points'))}"
        )
    return sorted(TASKS[dataset])


def get_task(dataset: str, name: str) -> Task:
    """The setting ``name`` of ``dataset``; raises ValueError listing the valid names."""
    valid = list_tasks(dataset)
    if name not in TASKS[dataset]:
        raise ValueError(
            f"unknown task {name!r} for dataset {dataset!r}; valid tasks: {', '.join(valid)}"
        )
    steps = tuple(tuple(s) for s in TASKS[dataset][name])
    return Task(dataset=dataset, name=name, steps=steps)


IGNORE = 255


def point_label_lut(task: Task, step: int, split: str = "train") -> np.ndarray:
    """uint8 (256,): label stored in a point-cloud block -> model id at ``step``.

    ``split="train"`` (the protocol's training labels): background and the step's classes get
    their model id (position in ``task.order(step)``), every other class (old or future) 0.
    ScanNet's unannotated is 255 (ignored) at step 0 and background 0 at later steps, as the
    protocol does. ``split="eval"``: every class seen so far keeps its model id, future classes
    and unannotated are 0 (a prediction of a class on an unannotated point is a false positive
    of that class, as in the protocol's confusion matrix). Values that are no stored label of
    the dataset map to 255.
    """
    import numpy as np

    if task.dataset not in POINT_LABELS:
        raise ValueError(f"{task.dataset!r} is not a point-cloud dataset")
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    labels = POINT_LABELS[task.dataset]
    position = {c: k for k, c in enumerate(task.order(step))}
    kept = set(task.new_classes(step) if split == "train" else task.classes_seen(step))
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for stored in range(len(labels.stored)):
        tid = labels.task_id(stored)
        if tid is None:
            lut[stored] = IGNORE if split == "train" and step == 0 else 0
        else:
            lut[stored] = position[tid] if tid in kept else 0
    return lut
