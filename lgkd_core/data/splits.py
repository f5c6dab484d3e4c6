"""Which images each incremental step uses, computed from the label masks alone.

Rules (reference ``filter_images``), with ``new`` = this step's classes without background:

* train, overlap: the image contains at least one class of ``new``;
* train, disjoint: additionally every value in it is in ``new``, an old class, 0 or 255
  (no future class is visible);
* eval: the image contains at least one foreground class seen so far (future classes are
  labelled background by the eval lookup table).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from lgkd_core.data.labels import IGNORE, check_mask_values, invalid_values
from lgkd_core.data.sources import DataFileError, image_size, open_source, read_mask
from lgkd_core.io import write_ids
from lgkd_core.tasks import Task, get_task

log = logging.getLogger(__name__)

SHOWCASE_FILE = "showcase.txt"  # beside the step lists: the predictions figure's images


# -- reading masks in parallel -----------------------------------------------------------------


def label_set(path: Path | str) -> frozenset[int]:
    """Distinct values of one mask file."""
    counts = np.bincount(read_mask(path).ravel(), minlength=256)
    return frozenset(int(v) for v in np.flatnonzero(counts))


def _scan_pair(pair: tuple[Path, Path]) -> tuple[frozenset[int], tuple[int, int], tuple[int, int]]:
    """(label set, mask (W, H), image (W, H)); the image is only opened for its header."""
    image_path, mask_path = pair
    mask = read_mask(mask_path)
    counts = np.bincount(mask.ravel(), minlength=256)
    labels = frozenset(int(v) for v in np.flatnonzero(counts))
    return labels, (mask.shape[1], mask.shape[0]), image_size(image_path)


def _parallel_map(fn: Callable, items: Sequence, workers: int, what: str = "") -> list:
    """``[fn(x) for x in items]`` over ``workers`` processes (0: one per core), in order.

    With ``what``, progress: a bar on a terminal, else a log line every tenth of the items."""
    workers = workers or os.cpu_count() or 1
    done: list = []
    bar = None
    if what and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=what, unit="file")
    every = max(1, len(items) // 10)

    def tick(result) -> None:
        done.append(result)
        if bar is not None:
            bar.update(1)
        elif what and (len(done) % every == 0 or len(done) == len(items)):
            log.info("%s: %d/%d", what, len(done), len(items))

    if workers <= 1 or len(items) < 2 * workers:
        for x in items:
            tick(fn(x))
    else:
        chunksize = max(1, len(items) // (workers * 8))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(fn, items, chunksize=chunksize):
                tick(result)
    if bar is not None:
        bar.close()
    return done


def mask_label_sets(mask_paths: Sequence[Path | str], workers: int = 0) -> list[frozenset[int]]:
    """Distinct values of each mask (masks only, never the images), in parallel, in order."""
    return _parallel_map(label_set, list(mask_paths), workers)


# -- selection rules ---------------------------------------------------------------------------
def _check_all(label_sets: Sequence[frozenset[int]], task: Task, paths) -> None:
    for k, labels in enumerate(label_sets):
        if invalid_values(labels, task):
            name = paths[k] if paths is not None else f"#{k} of the split"
            check_mask_values(labels, task, name)


def select_train(
    label_sets: Sequence[frozenset[int]],
    task: Task,
    step: int,
    overlap: bool = True,
    paths: Sequence[Path | str] | None = None,
) -> list[int]:
    """Indices of the images used to train ``step`` (overlap or disjoint protocol).

    ``paths`` (optional) names the masks in the error raised for values outside the dataset.
    """
    _check_all(label_sets, task, paths)
    new = set(task.new_classes(step)) - {0}
    allowed = new | set(task.old_classes(step)) | {0, IGNORE}
    return [
        k for k, labels in enumerate(label_sets) if labels & new and (overlap or labels <= allowed)
    ]


def select_eval(
    label_sets: Sequence[frozenset[int]],
    task: Task,
    step: int,
    paths: Sequence[Path | str] | None = None,
) -> list[int]:
    """Indices of the images evaluated at ``step``: at least one seen foreground class."""
    _check_all(label_sets, task, paths)
    seen = set(task.classes_seen(step)) - {0}
    return [k for k, labels in enumerate(label_sets) if labels & seen]


def select_showcase(label_sets: Sequence[frozenset[int]], task: Task, count: int = 4) -> list[int]:
    """Indices of up to ``count`` images for the predictions figure, a pure function of the masks.

    Preferred: images holding a class of step 0 and a class added later (old and new in one
    picture), those with the most later classes first, then by index. When fewer qualify, images
    with any foreground class fill the list in the same order.
    """
    base = set(task.classes_seen(0)) - {0}
    later = set(task.classes_seen(task.num_steps - 1)) - base - {0}

    def rank(k: int) -> tuple[int, int, int, int]:
        labels = label_sets[k]
        both = bool(labels & base) and bool(labels & later)
        return (not both, -len(labels & later), -len(labels & (base | later)), k)

    candidates = [k for k, labels in enumerate(label_sets) if labels & (base | later)]
    return sorted(sorted(candidates, key=rank)[:count])


# -- id lists --------------------------------------------------------------------------------
def read_ids(path: Path | str) -> list[str]:
    """Ids written by :func:`write_ids` (blank lines skipped)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def prepare_splits(
    dataset: str,
    task_name: str,
    data_root: Path | str,
    out_dir: Path | str,
    overlap: bool = True,
    workers: int = 0,
) -> dict[int, dict[str, int]]:
    """Write ``step{s}-train.txt`` and ``step{s}-val.txt`` for every step into ``out_dir``, and
    ``showcase.txt``: the validation images of the predictions figure (:func:`select_showcase`).

    Every mask is decoded once; mask values and image/mask sizes are checked on the way.
    Returns ``{step: {"train": n, "val": m}}``.
    """
    task = get_task(dataset, task_name)
    source = open_source(dataset, data_root)
    out_dir = Path(out_dir)
    label_sets: dict[str, list[frozenset[int]]] = {}
    ids: dict[str, list[str]] = {}
    for split in ("train", "val"):
        ids[split] = source.ids(split)
        pairs = [(source.image_path(split, i), source.mask_path(split, i)) for i in ids[split]]
        scans = _parallel_map(_scan_pair, pairs, workers, f"{split} masks scanned")
        for (image_path, mask_path), (labels, mask_wh, image_wh) in zip(pairs, scans, strict=True):
            check_mask_values(labels, task, mask_path)
            if mask_wh != image_wh:
                raise DataFileError(
                    f"image {image_path} is {image_wh[0]}x{image_wh[1]} but its mask {mask_path} "
                    f"is {mask_wh[0]}x{mask_wh[1]} (width x height); they must match"
                )
        label_sets[split] = [s for s, _, _ in scans]
    counts: dict[int, dict[str, int]] = {}
    for step in range(task.num_steps):
        train = select_train(label_sets["train"], task, step, overlap)
        val = select_eval(label_sets["val"], task, step)
        write_ids(out_dir / f"step{step}-train.txt", [ids["train"][k] for k in train])
        write_ids(out_dir / f"step{step}-val.txt", [ids["val"][k] for k in val])
        counts[step] = {"train": len(train), "val": len(val)}
    showcase = select_showcase(label_sets["val"], task)
    write_ids(out_dir / SHOWCASE_FILE, [ids["val"][k] for k in showcase])
    return counts
