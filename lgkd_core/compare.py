"""Every method of one setting side by side, with the published numbers beside ours.

Inputs: each method's run ``table.csv`` (written by ``lgkd_core report table``) and, optionally,
the step-0 ``metrics.json`` of the dataset's Joint experiment (task ``offline``: all classes at
once). Joint is scored with the setting's split: *old* = the setting's step-0 foreground classes,
*new* = the classes it adds later, *all* = every class with background (the mean of the
per-class IoUs of the offline model over each group).

Output ``compare.csv`` (mIoU in %, 2 decimals, empty = no value), one row per method in the
order given, Joint last: ``method``, ``experiment``, ``init`` (how step 0 was initialised),
``steps``, the final step's ``old``, ``new``, ``all`` and ``mean_all`` (mean of *all* over the
steps), ``published_<metric>`` and ``diff_<metric>`` (ours minus published) for each of them, and
``source`` (where the published row comes from, see :mod:`lgkd_core.published`).
``compare.png``: all / old / new mIoU against the step, one line per method, Joint dashed.

CLI::

    python -m lgkd_core compare --dataset voc --task 15-1 \\
        --method LGKD=voc_15-1=results/voc_15-1/table.csv --method FT=voc_15-1_ft=... \\
        [--joint voc_joint=results/voc_joint/step0/metrics.json] --out compare.csv \\
        [--plot compare.png] [--title TEXT]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from lgkd_core.published import published
from lgkd_core.report import read_table, save_png, write_csv
from lgkd_core.tasks import Task, get_task

METRICS = ("old", "new", "all", "mean_all")


def _final(table: pd.DataFrame) -> dict[str, float]:
    row = table.sort_values("step").iloc[-1]
    return {m: float(row[m]) if m in row and pd.notna(row[m]) else math.nan for m in METRICS}


def joint_scores(metrics: dict, task: Task, where: str = "metrics.json") -> dict[str, float]:
    """old / new / all mIoU (%) of an offline model's ``class_iou`` under ``task``'s split."""
    iou = metrics.get("class_iou")
    if not isinstance(iou, dict):
        raise ValueError(f"{where} has no class_iou: not a metrics.json of `lgkd_core evaluate`")
    names = task.class_names
    groups = {
        "old": task.base_classes(),
        "new": task.future_classes(0),
        "all": task.classes_seen(task.num_steps - 1),
    }
    out = {}
    for group, ids in groups.items():
        missing = [names[c] for c in ids if names[c] not in iou]
        if missing:
            raise ValueError(
                f"{where} has no IoU for {', '.join(missing[:5])}: the Joint model must be "
                f"trained on task 'offline' of {task.dataset}"
            )
        values = [iou[names[c]] for c in ids if iou[names[c]] is not None]
        out[group] = 100 * float(np.mean(values)) if values else math.nan
    out["mean_all"] = math.nan  # one step: no curve over steps
    return out


def compare_table(
    dataset: str,
    task_name: str,
    methods: list[tuple[str, str, pd.DataFrame]],
    joint: tuple[str, dict] | None = None,
) -> pd.DataFrame:
    """The ``compare.csv`` rows (see the module docstring); ``methods`` = (method, experiment,
    table) in display order, ``joint`` = (experiment, metrics.json contents) or None."""
    task = get_task(dataset, task_name)
    rows = []
    entries: list[tuple[str, str, dict[str, float], str, int]] = []
    for method, experiment, table in methods:
        inits = table["init"].dropna() if "init" in table else pd.Series(dtype=str)
        init = inits.iloc[0] if len(inits) else ""
        entries.append((method, experiment, _final(table), init, int(table["step"].max()) + 1))
    if joint is not None:
        experiment, metrics = joint
        scores = joint_scores(metrics, task, f"{experiment} step0/metrics.json")
        entries.append(("Joint", experiment, scores, metrics.get("init", ""), 1))
    for method, experiment, ours, init, steps in entries:
        ref = published(dataset, task_name, method)
        row = {"method": method, "experiment": experiment, "init": init, "steps": steps}
        row.update(ours)
        for m in METRICS:
            value = getattr(ref, m) if ref is not None else None
            row[f"published_{m}"] = math.nan if value is None else value
        for m in METRICS:
            row[f"diff_{m}"] = row[m] - row[f"published_{m}"]
        row["source"] = ref.source if ref is not None else ""
        rows.append(row)
    return pd.DataFrame(rows)


def plot_compare(
    tables: dict[str, pd.DataFrame], joint: dict[str, float] | None, path: Path, title: str = ""
) -> None:
    """all / old / new mIoU (%) per step, one line per method; Joint as a dashed level."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharey=True)
    for ax, metric in zip(axes, ("all", "old", "new"), strict=True):
        for method, table in tables.items():
            steps = table["step"].to_numpy(dtype=float)
            y = pd.to_numeric(table[metric], errors="coerce").to_numpy(dtype=float)
            ax.plot(steps, y, "-o", markersize=3, label=method)
        if joint is not None and not math.isnan(joint[metric]):
            ax.axhline(joint[metric], color="black", linestyle="--", label="Joint")
        ax.set_title(f"{metric} classes" if metric != "all" else "all classes")
        ax.set_xlabel("step")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mIoU (%)")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    if title:
        fig.suptitle(title)
    save_png(fig, path)


def _split(item: str, parts: int, option: str) -> list[str]:
    values = item.split("=", parts - 1)
    if len(values) != parts or not all(values):
        shape = "METHOD=EXPERIMENT=TABLE" if parts == 3 else "EXPERIMENT=METRICS"
        raise ValueError(f"{option} expects {shape}, got {item!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--task", required=True, help="the setting, e.g. 15-1")
    parser.add_argument(
        "--method",
        action="append",
        required=True,
        metavar="METHOD=EXPERIMENT=TABLE",
        help="a method's run table.csv (repeat, in display order)",
    )
    parser.add_argument("--joint", metavar="EXPERIMENT=METRICS", help="Joint's step0 metrics.json")
    parser.add_argument("--out", required=True, type=Path, help="compare.csv to write")
    parser.add_argument("--plot", type=Path, help="compare.png to write")
    parser.add_argument("--title", default="")


def run(args: argparse.Namespace) -> int:
    methods, tables = [], {}
    for item in args.method:
        method, experiment, path = _split(item, 3, "--method")
        if method in tables:
            raise ValueError(f"--method: {method} is given twice")
        tables[method] = read_table(path)
        methods.append((method, experiment, tables[method]))
    joint = None
    if args.joint:
        experiment, path = _split(args.joint, 2, "--joint")
        try:
            joint = (experiment, json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: no such metrics.json; evaluate {experiment} first"
            ) from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete it and rebuild") from None
    table = compare_table(args.dataset, args.task, methods, joint)
    write_csv(table, args.out)
    if args.plot:
        levels = table.set_index("method").loc["Joint"] if joint is not None else None
        plot_compare(tables, levels, args.plot, args.title)
    return 0
