"""Split preparation (overlap filtering) of VOC 15-1 on 10,000 training masks.

Ours: ``lgkd_core.data.splits.prepare_splits`` (every mask decoded once for all steps, images only
opened for their header, mask values by bincount, ``workers`` processes), writing the id lists of
every step.

Baseline, what the reference does (PLOP ``dataset/voc.py`` + ``dataset/utils.filter_images``):
each step's training job builds its datasets, and each dataset decodes every image *and* mask of
its list (``dataset[i]`` opens both with PIL) in one process and takes ``np.unique`` of the mask.
Per step that is one pass over the training list (train set) and at least one over the val list
(the test set; the reference makes a second one for its val set, not counted here). The pass
times are measured here; the task's total is ``steps x (train pass + val pass)``.

Files: ``bench/voc_like.py`` (24 distinct 500x375 pairs hard-linked under 10,000 + 1,449 names).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from common import parse_args, print_machine, print_table, ratio_line, set_threads
from PIL import Image
from voc_like import write_voc_layout

from lgkd_core.data.sources import open_source
from lgkd_core.data.splits import mask_label_sets, prepare_splits, select_train
from lgkd_core.tasks import get_task

TASK = ("voc", "15-1")


def reference_filter(
    pairs: list[tuple[Path, Path]], labels: list[int], labels_old: list[int], overlap: bool = True
) -> list[int]:
    """The reference's filtering pass: decode image and mask, ``np.unique``, class test."""
    labels = [c for c in labels if c != 0]
    labels_cum = labels + labels_old + [0, 255]
    keep = []
    for i, (image_path, mask_path) in enumerate(pairs):
        _image = Image.open(image_path).convert("RGB")  # dataset[i] decodes the image too
        cls = np.unique(np.array(Image.open(mask_path)))
        present = any(x in labels for x in cls)
        if present and (overlap or all(x in labels_cum for x in cls)):
            keep.append(i)
    return keep


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    set_threads(args.threads)
    print_machine("bench_splits: split preparation (overlap filtering), VOC 15-1")
    n_train, n_val = (120, 20) if args.quick else (10_000, 1_449)
    task = get_task(*TASK)
    with tempfile.TemporaryDirectory(prefix="bench_splits_") as tmp:
        tmp = Path(tmp)
        t_gen, _ = timed(lambda: write_voc_layout(tmp, n_train, n_val, n_distinct=24))
        print(f"data: {n_train} train + {n_val} val 500x375 pairs (24 distinct, hard-linked), "
              f"written in {t_gen:.1f} s")  # fmt: skip
        source = open_source("voc", tmp)
        pairs = {
            s: [(source.image_path(s, i), source.mask_path(s, i)) for i in source.ids(s)]
            for s in ("train", "val")
        }
        # warm-up: imports, the page cache, the process pool's first start
        reference_filter(pairs["train"][:20], [16], list(range(16)))
        mask_label_sets([m for _, m in pairs["train"][:20]], workers=1)

        step = 1
        labels, labels_old = task.new_classes(step), task.old_classes(step)
        t_ref_train, ref_keep = timed(lambda: reference_filter(pairs["train"], labels, labels_old))
        t_ref_val, _ = timed(lambda: reference_filter(pairs["val"], task.classes_seen(step), []))
        masks = [m for _, m in pairs["train"]]
        t_ours_pass, sets = timed(lambda: mask_label_sets(masks, workers=1))
        ours_keep = select_train(sets, task, step, overlap=True)
        if ours_keep != ref_keep:
            raise SystemExit("MISMATCH: select_train and the reference pass keep different images")
        t_select, _ = timed(
            lambda: [select_train(sets, task, s, True) for s in range(task.num_steps)]
        )
        t_ours_1, _ = timed(lambda: prepare_splits(*TASK, tmp, tmp / "out1", workers=1))
        t_ours_all, counts = timed(lambda: prepare_splits(*TASK, tmp, tmp / "out", workers=0))

    steps = task.num_steps
    t_ref_task = steps * (t_ref_train + t_ref_val)
    rows = [
        ["reference pass: train list (image+mask, np.unique)", 1, t_ref_train, n_train],
        ["reference pass: val list", 1, t_ref_val, n_val],
        [f"reference task = {steps} x (train + val)", 1, t_ref_task, steps * (n_train + n_val)],
        ["ours: mask_label_sets(train), 1 pass", 1, t_ours_pass, n_train],
        [f"ours: select_train for {steps} steps (no I/O)", 1, t_select, 0],
        ["ours: prepare_splits (all steps, train+val)", 1, t_ours_1, n_train + n_val],
        ["ours: prepare_splits (all steps, train+val)", "all", t_ours_all, n_train + n_val],
    ]
    print_table(["what", "procs", "seconds", "files decoded"], rows)
    print(f"per-pass speed-up, 1 process: {t_ref_train / t_ours_pass:.2f}x "
          f"(mask only, no image decode); kept at step 1: {len(ours_keep)} (same as reference); "
          f"lists written: {counts[steps - 1]}")  # fmt: skip
    baseline = f"reference filter_images ({steps} steps x (train + val pass), 1 process)"
    ratio_line("splits_15-1_task", t_ref_task / t_ours_all, baseline, 10)
    ratio_line("splits_15-1_task_1proc", t_ref_task / t_ours_1, baseline, 10)


if __name__ == "__main__":
    main()
