"""Per-run figures beside ``miou.png``: the IoU of every class at every step, and the final
step's confusion matrix with its background / old / new blocks.

* ``class_iou.png``: a classes x steps heatmap of IoU (%) from a run ``table.csv``; a class is
  blank before the step that adds it; a line separates step 0's classes from the later ones.
* ``confusion.png``: the final step's confusion matrix from its ``metrics.json``, each row (a
  ground-truth class) normalised to sum to 1; lines separate background, the old classes (seen
  before the final step) and the final step's new classes. Where new pixels go (to background,
  to old classes) is LGKD's point.

Both functions return the matrix they drew, so a test can check it without reading pixels.
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
