"""Result tables and plots from the per-step ``metrics.json`` files.

Files (mIoU in percent, 2 decimals, the paper's convention):

* ``table.csv`` of a run: one row per step with ``step``, ``classes`` (the classes learned in that
  step, as original ids: ``0-15``, ``16``, ``17+18``), ``background``, ``old``, ``new``, ``all``,
  ``mean_all`` (running mean of ``all`` over steps 0..s), then the IoU of every class by name
  (empty where a class is not seen yet or has no pixel in the validation images).
* ``table.csv`` of a sweep: the same rows; every numeric column ``X`` is the mean over members,
  with ``X_std`` beside it (sample standard deviation), and ``members`` the count.
* ``summary.csv``: one row per experiment: its final step's ``old``/``new``/``all`` (with
  ``_std`` for sweeps), ``mean_all`` and step 0's ``all``.

CLI: ``python -m lgkd_core report {table,sweep,summary} ...``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from lgkd_core.engine.checkpoint import atomic_write_bytes, atomic_write_text
from lgkd_core.tasks import get_task

GROUPS = ("background", "old", "new", "all")


def _read_metrics(item: dict | Path | str) -> dict:
    if isinstance(item, dict):
        return item
    path = Path(item)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such metrics file (run its evaluate step)") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); delete it and evaluate again"
        ) from None
    for key in ("step", "summary", "class_iou", "dataset", "task"):
        if key not in payload:
            raise ValueError(f"{path} has no {key!r}: not a metrics.json written by evaluate")
    return payload


def _id_label(ids: Sequence[int]) -> str:
    """``[0, 1, ..., 15]`` -> ``0-15``; ``[16]`` -> ``16``; ``[3, 7]`` -> ``3+7``."""
    ids = sorted(ids)
    if len(ids) > 2 and ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    return "+".join(str(i) for i in ids)


def _percent(value: float | None) -> float:
    return math.nan if value is None else round(100.0 * value, 2)


def step_table(metrics: Sequence[dict | Path | str]) -> pd.DataFrame:
    """One row per step from the metrics of steps ``0..T`` of one run (any order)."""
    payloads = sorted((_read_metrics(m) for m in metrics), key=lambda p: p["step"])
    if not payloads:
        raise ValueError("no metrics given")
    steps = [p["step"] for p in payloads]
    if steps != list(range(len(steps))):
        raise ValueError(f"metrics for steps {steps}: every step from 0 is needed, once")
    first = payloads[0]
    task = get_task(first["dataset"], first["task"])
    class_names = task.channel_names(len(payloads) - 1)
    rows = []
    for p in payloads:
        if (p["dataset"], p["task"]) != (first["dataset"], first["task"]):
            raise ValueError(
                f"step {p['step']} is {p['dataset']}/{p['task']}, step 0 is "
                f"{first['dataset']}/{first['task']}: metrics of different runs"
            )
        row = {"step": p["step"], "classes": _id_label(task.new_classes(p["step"]))}
        row.update({g: _percent(p["summary"].get(g)) for g in GROUPS})
        # Class 0 is the ``background`` column already.
        row.update({name: _percent(p["class_iou"].get(name)) for name in class_names[1:]})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(
        table.columns.get_loc("all") + 1, "mean_all", table["all"].expanding().mean().round(2)
    )
    return table


def sweep_table(members: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean and standard deviation per step over the members' tables (per class by name)."""
    if not members:
        raise ValueError("a sweep needs at least one member table")
    names = list(members)
    steps = list(members[names[0]]["step"])
    for name in names[1:]:
        if list(members[name]["step"]) != steps:
            raise ValueError(
                f"member {name} has steps {list(members[name]['step'])}, "
                f"member {names[0]} has {steps}"
            )
    numeric: list[str] = []
    for table in members.values():
        numeric += [c for c in table.columns if c not in numeric and c not in ("step", "classes")]
    out = pd.DataFrame({"step": steps})
    missing = pd.Series([math.nan] * len(steps))
    for col in numeric:
        values = pd.concat(
            [t[col].reset_index(drop=True) if col in t else missing for t in members.values()],
            axis=1,
        ).astype(float)
        out[col] = values.mean(axis=1, skipna=True).round(2)
        out[f"{col}_std"] = values.std(axis=1, ddof=1, skipna=True).round(2)
    out["members"] = len(names)
    return out


def summary_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The final step of every experiment, plus its step-0 ``all``."""
    rows = []
    for name, table in tables.items():
        last = table.iloc[-1]
        row = {"experiment": name, "steps": len(table)}
        for col in ("old", "new", "all", "mean_all"):
            row[col] = last[col]
            if f"{col}_std" in table:
                row[f"{col}_std"] = last[f"{col}_std"]
        row["step0_all"] = table.iloc[0]["all"]
        rows.append(row)
    return pd.DataFrame(rows)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    atomic_write_text(Path(path), table.to_csv(index=False, float_format="%.2f"))


def read_csv(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table")
    table = pd.read_csv(path)
    if "step" not in table or "all" not in table:
        raise ValueError(f"{path} is not a result table (needs 'step' and 'all' columns)")
    return table


def plot_miou(table: pd.DataFrame, path: Path, title: str = "") -> None:
    """old/new/all (and background, dashed) per step; bands of one std for sweeps."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    styles = {"old": "-o", "new": "-s", "all": "-^", "background": "--"}
    for col, style in styles.items():
        y = table[col].astype(float)
        if y.isna().all():
            continue
        ax.plot(table["step"], y, style, label=col)
        if f"{col}_std" in table:
            std = table[f"{col}_std"].astype(float).fillna(0.0)
            ax.fill_between(table["step"], y - std, y + std, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("mIoU (%)")
    ax.set_xticks(list(table["step"]))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), lambda f: f.write(buffer.getvalue()))


# -- CLI -------------------------------------------------------------------------------------
def _pairs(items: list[str], option: str) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} expects NAME=PATH, got {item!r}")
        out[name] = Path(path)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="report_kind", required=True)
    t = sub.add_parser("table", help="table.csv and miou.png of one run")
    t.add_argument("--metrics", nargs="+", required=True, type=Path, help="metrics.json per step")
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--plot", type=Path)
    t.add_argument("--title", default="")
    s = sub.add_parser("sweep", help="mean/std table over the members of a sweep")
    s.add_argument("--member", nargs="+", required=True, metavar="NAME=TABLE")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--plot", type=Path)
    s.add_argument("--title", default="")
    m = sub.add_parser("summary", help="final-step scores of several experiments")
    m.add_argument("--table", nargs="+", required=True, metavar="EXPERIMENT=TABLE")
    m.add_argument("--out", required=True, type=Path)


def run(args: argparse.Namespace) -> int:
    if args.report_kind == "table":
        table = step_table(args.metrics)
    elif args.report_kind == "sweep":
        members = {k: read_csv(v) for k, v in _pairs(args.member, "--member").items()}
        table = sweep_table(members)
    else:
        tables = {k: read_csv(v) for k, v in _pairs(args.table, "--table").items()}
        write_csv(summary_table(tables), args.out)
        return 0
    write_csv(table, args.out)
    if args.plot:
        plot_miou(table, args.plot, args.title)
    return 0
