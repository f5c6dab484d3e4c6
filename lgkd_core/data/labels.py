"""Per-step label remapping from original class ids to model ids, as 256-entry lookup tables.

Model id of a class at step ``t`` = its position in ``task.order(t)``. 255 (ignore) stays 255.

* ``train_lut``: background and this step's classes keep their (model) id; every other value,
  old or future class, becomes background 0 (the reference's VOC ``data_masking="current"``).
* ``eval_lut``: every class seen so far keeps its id; future classes become background 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from lgkd_core.tasks import Task

IGNORE = 255


def _lut(task: Task, step: int, kept: Iterable[int]) -> np.ndarray:
    position = {c: k for k, c in enumerate(task.order(step))}
    lut = np.zeros(256, dtype=np.uint8)
    for c in kept:
        lut[c] = position[c]
    lut[IGNORE] = IGNORE
    return lut


def train_lut(task: Task, step: int) -> np.ndarray:
    """uint8 (256,): original id -> model id for training masks of ``step``."""
    return _lut(task, step, [0, *task.new_classes(step)])


def eval_lut(task: Task, step: int) -> np.ndarray:
    """uint8 (256,): original id -> model id for evaluation masks of ``step``."""
    return _lut(task, step, task.classes_seen(step))


def remap(mask: np.ndarray | torch.Tensor, lut: np.ndarray | torch.Tensor):
    """``lut[mask]`` for a uint8 mask of any shape (numpy or torch), one indexing operation.

    The result has the mask's type (numpy/torch), device and shape, dtype uint8.
    """
    if isinstance(mask, torch.Tensor):
        table = torch.as_tensor(lut, dtype=torch.uint8, device=mask.device)
        # a uint8 index tensor would be read as a boolean mask: index with int64
        return table[mask.long()]
    return np.asarray(lut, dtype=np.uint8)[mask]


def invalid_values(values: Iterable[int], task: Task) -> list[int]:
    """Values that are neither a class id of ``task``'s dataset nor 255, sorted."""
    n = task.num_dataset_classes
    return sorted(int(v) for v in values if not (0 <= int(v) < n or int(v) == IGNORE))


def check_mask_values(values: Iterable[int], task: Task, path: Path | str) -> None:
    """Raise ValueError naming ``path`` when ``values`` hold ids outside the dataset's classes."""
    bad = invalid_values(values, task)
    if bad:
        raise ValueError(
            f"mask {path} contains values {bad} that are not class ids of the "
            f"{task.dataset} dataset (0..{task.num_dataset_classes - 1}, 255 = ignore); "
            "check that the file is a label mask of this dataset (palette indices, not colours)"
        )
