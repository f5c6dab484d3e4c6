"""Per-run figures beside ``miou.png``: the IoU of every class at every step, and the final
step's confusion matrix with its background / old / new blocks.

* ``class_iou.png``: a classes x steps heatmap of IoU (%) from a run ``table.csv``; a class is
  blank before the step that adds it; a line separates step 0's classes from the later ones.
* ``predictions.png``: the showcase validation images (rows), with columns image, ground truth
  and the prediction after every step, coloured in the dataset's palette, with a legend of the
  classes shown.
* ``confusion.png``: the final step's confusion matrix from its ``metrics.json``, each row (a
  ground-truth class) normalised to sum to 1; lines separate background, the old classes (seen
  before the final step) and the final step's new classes. Where new pixels go (to background,
  to old classes) is LGKD's point.

Each function returns the matrix (or grid) it drew, so a test can check it without reading pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lgkd_core.report import FIXED, save_png
from lgkd_core.tasks import get_task


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def class_iou_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """IoU (%) with one row per class (background first, then the table's class columns) and
    one column per step; NaN where the class is not seen yet (or has no validation pixel)."""
    classes = ["background"] + [
        c for c in table.columns if c not in FIXED and not c.endswith("_std")
    ]
    matrix = table.set_index("step")[classes].apply(pd.to_numeric, errors="coerce").T
    matrix.index = [c.removeprefix("class:") for c in classes]
    return matrix


def plot_class_iou(table: pd.DataFrame, path: Path | str, title: str = "") -> pd.DataFrame:
    """``class_iou.png`` from a run table; returns :func:`class_iou_matrix`."""
    matrix = class_iou_matrix(table)
    n_classes, n_steps = matrix.shape
    fig = _figure(max(4.0, 1.0 + 0.6 * n_steps), max(3.0, 0.8 + 0.22 * n_classes))
    ax = fig.add_subplot()
    image = ax.imshow(
        np.ma.masked_invalid(matrix.to_numpy(dtype=float)),
        aspect="auto",
        cmap="viridis",
        vmin=0,
        vmax=100,
        interpolation="nearest",
    )
    ax.set_xticks(range(n_steps), [str(s) for s in matrix.columns])
    ax.set_yticks(range(n_classes), list(matrix.index), fontsize="small")
    ax.set_xlabel("step")
    first = matrix.iloc[:, 0].notna().sum()  # background and step 0's classes
    if first < n_classes:
        ax.axhline(first - 0.5, color="white", linewidth=2)
    fig.colorbar(image, ax=ax, label="IoU (%)")
    if title:
        ax.set_title(title)
    save_png(fig, path)
    return matrix


def confusion_blocks(metrics: dict) -> tuple[np.ndarray, list[str], int]:
    """(row-normalised confusion matrix, class names, number of old classes) of one step's
    metrics; rows are ground truth, columns predictions; rows without pixels stay 0."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    totals = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    task = get_task(metrics["dataset"], metrics["task"])
    step = int(metrics["step"])
    num_old = task.num_classes(step - 1) - 1 if step > 0 else cm.shape[0] - 1
    return normalised, list(metrics["classes"]), num_old


def plot_confusion(metrics: dict | Path | str, path: Path | str, title: str = "") -> np.ndarray:
    """``confusion.png`` from one step's metrics (a payload or its path); returns the matrix."""
    if not isinstance(metrics, dict):
        metrics = json.loads(Path(metrics).read_text())
    matrix, names, num_old = confusion_blocks(metrics)
    n = len(names)
    size = max(4.0, 1.5 + 0.28 * n)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    labels = names if n <= 40 else [""] * n  # ADE's 150 names would be unreadable
    ax.set_xticks(range(n), labels, rotation=90, fontsize="x-small")
    ax.set_yticks(range(n), labels, fontsize="x-small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for edge in (0.5, num_old + 0.5):  # background | old | new
        if edge < n - 0.5:
            ax.axhline(edge, color="tab:red", linewidth=1)
            ax.axvline(edge, color="tab:red", linewidth=1)
    fig.colorbar(image, ax=ax, label="fraction of the class's pixels")
    ax.set_title(title or f"step {metrics['step']}: background | old | new")
    save_png(fig, path)
    return matrix


def _overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """``image`` uint8 (3, H, W) with every class of ``mask`` (H, W) drawn in its colour (255:
    left as is), by torchvision's drawing utility; returns (H, W, 3) uint8."""
    import torch
    from torchvision.utils import draw_segmentation_masks

    values = [int(v) for v in np.unique(mask) if v != 255]
    if not values:
        return image.transpose(1, 2, 0)
    masks = torch.from_numpy(np.stack([mask == v for v in values]))
    drawn = draw_segmentation_masks(
        torch.from_numpy(image),
        masks,
        alpha=0.7,
        colors=[tuple(int(c) for c in colours[v]) for v in values],
    )
    return drawn.permute(1, 2, 0).numpy()


def predictions_grid(steps: list[dict[str, np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """(image ids, classes shown) of per-step showcase predictions (as ``evaluate
    --predictions`` writes them, ordered by step); checks that every step shows the same images.
    """
    ids = [str(i) for i in steps[0]["ids"]]
    for step, arrays in enumerate(steps):
        if [str(i) for i in arrays["ids"]] != ids:
            raise ValueError(
                f"the predictions of step {step} show other images than step 0's ({ids}); "
                "re-run the evaluations of this run"
            )
    values = set()
    for k in range(len(ids)):
        values |= set(np.unique(steps[-1][f"label_{k}"]).tolist())
        for arrays in steps:
            values |= set(np.unique(arrays[f"pred_{k}"]).tolist())
    return ids, np.array(sorted(values - {255}), dtype=int)


def plot_predictions(
    paths: list[Path | str], dataset: str, path: Path | str, title: str = ""
) -> tuple[int, int]:
    """``predictions.png`` from the per-step ``.npz`` files (any order); returns the grid's
    (rows, columns): one row per image, columns image, ground truth, then one per step."""
    from matplotlib.patches import Patch

    from lgkd_core.data.palettes import palette
    from lgkd_core.tasks import DATASET_CLASSES

    steps = []
    for p in paths:
        with np.load(p) as archive:
            steps.append({k: archive[k] for k in archive.files})
    if not steps:
        raise ValueError("plot_predictions needs the predictions of at least one step")
    steps.sort(key=lambda arrays: int(arrays["step"]))
    if [int(a["step"]) for a in steps] != list(range(len(steps))):
        found = [int(a["step"]) for a in steps]
        raise ValueError(f"predictions of steps {found} given; every step 0..T is needed once")
    ids, shown = predictions_grid(steps)
    colours = palette(dataset)
    names = DATASET_CLASSES[dataset]
    rows, cols = len(ids), 2 + len(steps)
    fig = _figure(1.6 * cols + 2.4, 1.6 * rows + 0.6)
    layout = fig.add_gridspec(rows, cols + 1, width_ratios=[1.0] * cols + [1.5])
    grid = [[fig.add_subplot(layout[r, c]) for c in range(cols)] for r in range(rows)]
    for r in range(rows):
        image = steps[-1][f"image_{r}"]
        panels = [image.transpose(1, 2, 0), _overlay(image, steps[-1][f"label_{r}"], colours)]
        panels += [_overlay(image, arrays[f"pred_{r}"], colours) for arrays in steps]
        for c, panel in enumerate(panels):
            ax = grid[r][c]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(["image", "ground truth"][c] if c < 2 else f"step {c - 2}")
        grid[r][0].set_ylabel(ids[r], fontsize="x-small")
    handles = [Patch(color=colours[v] / 255, label=names[v]) for v in shown if v < len(names)]
    legend = fig.add_subplot(layout[:, cols])
    legend.axis("off")
    columns = 1 if len(handles) <= 30 else 2
    legend.legend(
        handles=handles, loc="center left", fontsize="x-small", frameon=False, ncols=columns
    )
    if title:
        fig.suptitle(title)
    save_png(fig, path)
    return rows, cols
