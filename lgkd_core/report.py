"""Result tables and plots from the per-step ``metrics.json`` files.

Input, ``metrics.json`` (one per step, written by ``lgkd_core.engine.evaluate.evaluate``):
a JSON object with at least ``step`` (int), ``summary`` ({``background``, ``old``, ``old_bg``,
``new``, ``all``}: mIoU as fractions in [0, 1] or null) and ``class_iou`` ({class name: IoU
fraction or null}); ``dataset`` and ``task`` (used to label the steps) may instead be given as
arguments (``--dataset``/``--task``).

Outputs (CSV, mIoU in **percent with 2 decimals**, the paper's convention; empty cell = NaN):

* run ``table.csv``: one row per step, sorted, steps ``0..T`` all present:
  ``step``, ``classes`` (the classes learned in that step: their names joined with ``+`` when
  the step adds at most 3 classes, e.g. ``pottedplant``; otherwise their original ids as ranges,
  e.g. ``0-15``, ``101-110``, ``0-2+4-9``), ``init`` (how the chain's step 0 started:
  ``imagenet-iabn``, ``imagenet-torchvision``, ``random`` or ``checkpoint``; empty when the
  metrics do not say), ``background``, ``old``, ``old_bg``, ``new``, ``all``, ``mean_all``
  (running mean of ``all`` over steps ``0..s``), then the IoU of every foreground class by name,
  in the final step's channel order (empty where the class is not seen yet or has no pixel in
  the validation images). A class whose name equals one of these fixed columns (ADE's ``step``)
  is written as ``class:<name>``.
* sweep ``table.csv`` (members = class orders / seeds of one experiment): ``step``, ``classes``
  (the members' label when they agree, else ``mixed``; ``init`` the same way), then for every
  numeric column ``X`` of the members' tables ``X`` (mean over the members that have a value)
  and ``X_std`` (sample standard deviation, ddof=1; empty with fewer than two values); per-class
  columns are matched by class name, whatever step the class was learned at; ``members`` =
  number of members.
* ``summary.csv``: one row per experiment: ``experiment``, ``steps``, ``members`` (1 for a single
  run), the final step's ``old``, ``new``, ``all``, ``mean_all`` (each with ``_std``, empty for
  single runs), ``step0_all`` and ``init`` (step 0's, as in the run tables).
* ``miou.png``: old / new / all (and background, dashed) per step; error bars and bands of one
  standard deviation when the table has ``_std`` columns. ``class_iou.png`` and
  ``confusion.png``: :mod:`lgkd_core.figures`.

CLI (every output is written atomically)::

    python -m lgkd_core report table --metrics step0.json step1.json ... --out table.csv
        [--plot miou.png] [--class-iou class_iou.png] [--confusion confusion.png]
        [--title TEXT] [--dataset D --task T]
    python -m lgkd_core report sweep --member NAME=table.csv ... --out table.csv
        [--plot miou.png] [--title TEXT]
    python -m lgkd_core report summary --table EXPERIMENT=table.csv ... --out summary.csv
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd

from lgkd_core.io import atomic_write_bytes, atomic_write_text, parse_pairs
from lgkd_core.tasks import Task, get_task

GROUPS = ("background", "old", "old_bg", "new", "all")
FIXED = ("step", "classes", "init", *GROUPS, "mean_all", "members")
FEW_CLASSES = 3  # steps adding at most this many classes are labelled by name


# -- reading metrics -------------------------------------------------------------------------
def _describe(item: object, index: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"metrics #{index} (in memory)"


def _load_metrics(item: dict | Path | str, where: str) -> dict:
    if isinstance(item, Mapping):
        payload = dict(item)
    else:
        path = Path(item)
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: no such metrics file; run the evaluate step that writes it"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{path} is not valid JSON ({err}); delete it and run its evaluate step again"
            ) from None
    if not isinstance(payload, dict):
        raise ValueError(f"{where} holds a JSON {type(payload).__name__}, not a metrics object")
    fix = "not a metrics.json written by `python -m lgkd_core evaluate`; evaluate again"
    for key, kind in (("step", int), ("summary", dict), ("class_iou", dict)):
        if not isinstance(payload.get(key), kind) or isinstance(payload.get(key), bool):
            raise ValueError(f"{where}: {key!r} missing or not a {kind.__name__} ({fix})")
    if payload["step"] < 0:
        raise ValueError(f"{where}: negative step {payload['step']} ({fix})")
    values = [*(payload["summary"].get(g) for g in GROUPS), *payload["class_iou"].values()]
    for v in values:
        if v is not None and (not isinstance(v, Real) or isinstance(v, bool)):
            raise ValueError(f"{where}: IoU value {v!r} is not a number or null ({fix})")
    return payload


def _run_task(payloads: list[tuple[str, dict]], dataset: str | None, task: str | None) -> Task:
    where, first = payloads[0]
    dataset = first.get("dataset", dataset)
    task = first.get("task", task)
    if dataset is None or task is None:
        raise ValueError(
            f"{where} does not name its dataset and task; pass --dataset and --task "
            f"(step_table(..., dataset=, task=))"
        )
    result = get_task(dataset, task)
    for where_p, p in payloads:
        other = (p.get("dataset", dataset), p.get("task", task))
        if other != (dataset, task):
            raise ValueError(
                f"{where_p} is {other[0]}/{other[1]} but {where} is {dataset}/{task}: "
                f"give the metrics of one run only"
            )
        if p["step"] >= result.num_steps:
            raise ValueError(
                f"{where_p}: step {p['step']} does not exist in {dataset}/{task} "
                f"(steps 0..{result.num_steps - 1})"
            )
    return result


def _check_steps(payloads: list[tuple[str, dict]]) -> None:
    """Steps must be exactly ``0..T``, each once."""
    by_step: dict[int, list[str]] = {}
    for where, p in payloads:
        by_step.setdefault(p["step"], []).append(where)
    for step, places in by_step.items():
        if len(places) > 1:
            raise ValueError(
                f"step {step} is given {len(places)} times ({', '.join(places)}); "
                f"pass one metrics.json per step"
            )
    last = max(by_step)
    missing = [s for s in range(last + 1) if s not in by_step]
    if missing:
        given = ", ".join(f"step {s}: {by_step[s][0]}" for s in sorted(by_step))
        raise ValueError(
            f"metrics for steps {sorted(by_step)} ({given}): step(s) {missing} missing; "
            f"pass the metrics.json of every step 0..{last}"
        )


def classes_label(task: Task, step: int) -> str:
    """Short label of the classes learned at ``step`` (see the module docstring)."""
    ids = task.new_classes(step)
    if len(ids) <= FEW_CLASSES:
        return "+".join(task.class_names[c] for c in ids)
    runs: list[list[int]] = []
    for c in sorted(ids):
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return "+".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def class_column(name: str) -> str:
    """Column of a class's IoU: its name, or ``class:<name>`` if that is a fixed column."""
    return f"class:{name}" if name in FIXED else name


def _percent(value: float | None) -> float:
    return math.nan if value is None else round(100.0 * float(value), 2)


# -- tables ----------------------------------------------------------------------------------
def step_table(
    metrics: Sequence[dict | Path | str],
    dataset: str | None = None,
    task: str | None = None,
) -> pd.DataFrame:
    """The run table (module docstring) from the metrics of steps ``0..T`` (any order).

    ``metrics``: payloads or paths of ``metrics.json``; ``dataset``/``task`` are used only when
    the payloads do not name them. Values in percent, 2 decimals.
    """
    if not metrics:
        raise ValueError("no metrics given; pass the metrics.json of every step")
    payloads = [(_describe(m, i), _load_metrics(m, _describe(m, i))) for i, m in enumerate(metrics)]
    _check_steps(payloads)
    payloads.sort(key=lambda wp: wp[1]["step"])
    run_task = _run_task(payloads, dataset, task)
    final = payloads[-1][1]["step"]
    names = [n for n in run_task.channel_names(final) if n != run_task.class_names[0]]

    rows = []
    for _, p in payloads:
        row: dict = {"step": p["step"], "classes": classes_label(run_task, p["step"])}
        row["init"] = p.get("init")
        row.update({g: _percent(p["summary"].get(g)) for g in GROUPS})
        row["mean_all"] = p["summary"].get("all")  # fraction; running mean below
        row.update({class_column(n): _percent(p["class_iou"].get(n)) for n in names})
        rows.append(row)
    table = pd.DataFrame(rows)
    # Running mean of the unrounded fractions, so rounding happens once.
    raw = pd.to_numeric(table["mean_all"], errors="coerce").astype(float)
    table["mean_all"] = (100.0 * raw.expanding().mean()).round(2)
    table["classes"] = table["classes"].astype(str)
    return table


def _numeric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c not in ("step", "classes", "init", "members")]


def sweep_table(members: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean and sample std (ddof=1) per step over the members' run tables, columns by name."""
    if not members:
        raise ValueError("a sweep needs at least one member table")
    names = list(members)
    for name, table in members.items():
        if "step" not in table.columns:
            raise ValueError(f"member {name} has no 'step' column: not a run table")
        stds = [c for c in table.columns if str(c).endswith("_std")] + (
            ["members"] if "members" in table.columns else []
        )
        if stds:
            raise ValueError(
                f"member {name} is already a sweep table (has {stds[0]!r}); "
                f"pass the members' own run tables"
            )
    steps = [int(s) for s in members[names[0]]["step"]]
    for name in names[1:]:
        other = [int(s) for s in members[name]["step"]]
        if other != steps:
            raise ValueError(
                f"member {name} has steps {other} but member {names[0]} has {steps}; "
                f"every member must have finished the same steps"
            )

    columns: list[str] = []
    for table in members.values():
        columns += [c for c in _numeric_columns(table) if c not in columns]
    out: dict[str, object] = {"step": steps}
    labels = [t["classes"].astype(str).tolist() for t in members.values() if "classes" in t.columns]
    out["classes"] = [
        row[0] if len(set(row)) == 1 else "mixed" for row in zip(*labels, strict=True)
    ] or [""] * len(steps)
    inits = [t["init"].astype(str).tolist() for t in members.values() if "init" in t.columns]
    if inits:
        out["init"] = [r[0] if len(set(r)) == 1 else "mixed" for r in zip(*inits, strict=True)]
    nan = np.full(len(steps), np.nan)
    for col in columns:
        stack = np.stack(
            [
                pd.to_numeric(t[col], errors="coerce").to_numpy(dtype=float) if col in t else nan
                for t in members.values()
            ]
        )
        frame = pd.DataFrame(stack.T)
        out[col] = frame.mean(axis=1, skipna=True).round(2).to_numpy()
        out[f"{col}_std"] = frame.std(axis=1, ddof=1, skipna=True).round(2).to_numpy()
    out["members"] = [len(names)] * len(steps)
    return pd.DataFrame(out)


def summary_table(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per experiment: its final step's scores and its step-0 ``all`` (percent)."""
    if not tables:
        raise ValueError("a summary needs at least one table")
    scores = ("old", "new", "all", "mean_all")
    rows = []
    for name, table in tables.items():
        lacking = [c for c in ("step", *scores) if c not in table.columns]
        if lacking or table.empty:
            raise ValueError(
                f"table of experiment {name} "
                + (f"lacks columns {lacking}" if lacking else "has no rows")
                + "; pass a table.csv written by `report table` or `report sweep`"
            )
        table = table.sort_values("step")
        last = table.iloc[-1]
        row: dict = {"experiment": name, "steps": len(table)}
        row["members"] = int(last["members"]) if "members" in table.columns else 1
        for col in scores:
            row[col] = float(last[col])
            row[f"{col}_std"] = float(last[f"{col}_std"]) if f"{col}_std" in table else math.nan
        row["step0_all"] = float(table.iloc[0]["all"])
        row["init"] = table.iloc[0]["init"] if "init" in table.columns else None
        rows.append(row)
    return pd.DataFrame(rows)


# -- files -----------------------------------------------------------------------------------
def write_csv(table: pd.DataFrame, path: Path | str) -> None:
    """``table`` as CSV (2 decimals, NaN as empty), written atomically."""
    atomic_write_text(Path(path), table.to_csv(index=False, float_format="%.2f"))


def read_table(path: Path | str) -> pd.DataFrame:
    """A ``table.csv`` written by this module; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table; run the report step that writes it")
    try:
        table = pd.read_csv(path, dtype={"classes": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV ({err}); delete it and rebuild") from None
    for col in ("step", "all"):
        if col not in table.columns:
            raise ValueError(
                f"{path} has no {col!r} column: not a table written by `lgkd_core report`"
            )
    return table


def save_png(fig, path: Path | str) -> None:
    """A matplotlib figure as PNG (tight layout), written atomically."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), lambda fh: fh.write(buffer.getvalue()))


def plot_miou(table: pd.DataFrame, path: Path | str, title: str = "") -> None:
    """mIoU (%) of old/new/all (and background, dashed) per step, saved as PNG atomically.

    With ``X_std`` columns (sweeps): error bars and a band of one standard deviation.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = table["step"].to_numpy(dtype=float)
    styles = {"old": "-o", "new": "-s", "all": "-^", "background": "--"}
    for col, style in styles.items():
        if col not in table.columns:
            continue
        y = pd.to_numeric(table[col], errors="coerce").to_numpy(dtype=float)
        if np.isnan(y).all():
            continue
        (line,) = ax.plot(steps, y, style, label=col)
        if f"{col}_std" in table.columns:
            std = pd.to_numeric(table[f"{col}_std"], errors="coerce").to_numpy(dtype=float)
            std = np.nan_to_num(std)
            ax.errorbar(steps, y, yerr=std, fmt="none", ecolor=line.get_color(), capsize=3)
            ax.fill_between(steps, y - std, y + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("mIoU (%)")
    ax.set_xticks(steps)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    save_png(fig, path)


# -- CLI -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands ``table``, ``sweep`` and ``summary`` (list options may be repeated)."""
    sub = parser.add_subparsers(
        dest="report_kind", required=True, metavar="{table,sweep,summary,html,print}"
    )
    t = sub.add_parser("table", help="table.csv (and miou.png) of one run from its metrics.json")
    t.add_argument(
        "--metrics",
        nargs="+",
        action="extend",
        required=True,
        type=Path,
        metavar="JSON",
        help="metrics.json of every step 0..T (any order)",
    )
    t.add_argument("--out", required=True, type=Path, help="table.csv to write")
    t.add_argument("--plot", type=Path, help="miou.png to write")
    t.add_argument("--class-iou", type=Path, help="class_iou.png to write (classes x steps)")
    t.add_argument("--confusion", type=Path, help="confusion.png of the final step to write")
    t.add_argument(
        "--predictions",
        nargs="+",
        action="extend",
        type=Path,
        metavar="NPZ",
        help="every step's showcase predictions (evaluate --predictions), for --predictions-png",
    )
    t.add_argument("--predictions-png", type=Path, help="predictions.png to write")
    t.add_argument("--title", default="", help="plot title")
    t.add_argument("--dataset", help="only for metrics that do not name their dataset")
    t.add_argument("--task", help="only for metrics that do not name their task")
    s = sub.add_parser("sweep", help="mean/std table (and plot) over the members of a sweep")
    s.add_argument(
        "--member",
        nargs="+",
        action="extend",
        required=True,
        metavar="NAME=TABLE",
        help="a member's run table.csv",
    )
    s.add_argument("--out", required=True, type=Path, help="table.csv to write")
    s.add_argument("--plot", type=Path, help="miou.png to write")
    s.add_argument("--title", default="", help="plot title")
    m = sub.add_parser("summary", help="final-step scores of several experiments")
    m.add_argument(
        "--table",
        nargs="+",
        action="extend",
        required=True,
        metavar="EXPERIMENT=TABLE",
        help="an experiment's table.csv (run or sweep)",
    )
    m.add_argument("--out", required=True, type=Path, help="summary.csv to write")
    h = sub.add_parser("html", help="results/report.html: every table and figure, one page")
    h.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    h.add_argument("--out", required=True, type=Path, help="report.html to write")
    h.add_argument(
        "--setting",
        nargs="+",
        action="extend",
        default=[],
        metavar="SETTING=RUN,RUN",
        help="a setting and its runs (one per method)",
    )
    h.add_argument(
        "--experiment", nargs="+", action="extend", default=[], help="a run or sweep shown alone"
    )
    h.add_argument("--captions", type=Path, help="folder of the workflow's caption .rst files")
    h.add_argument("--title", default="lgkd results")
    p = sub.add_parser("print", help="print CSV tables (compare.csv, summary.csv) as text")
    p.add_argument("tables", nargs="+", type=Path)


def run(args: argparse.Namespace) -> int:
    """Build the requested table (and plot); bad input raises ValueError/FileNotFoundError."""
    if args.report_kind == "html":
        from lgkd_core.html_report import build_report, read_captions

        settings = {k: v.split(",") for k, v in parse_pairs(args.setting, "--setting").items()}
        build_report(
            args.results,
            args.out,
            settings,
            args.experiment,
            read_captions(args.captions),
            args.title,
        )
        return 0
    if args.report_kind == "print":
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            for path in args.tables:
                if not path.is_file():
                    raise FileNotFoundError(f"{path}: no such table; build it with the workflow")
                print(f"{path}:\n{pd.read_csv(path).to_string(index=False)}\n")
        return 0
    if args.report_kind == "summary":
        tables = {k: read_table(v) for k, v in parse_pairs(args.table, "--table").items()}
        write_csv(summary_table(tables), args.out)
        return 0
    if args.report_kind == "table":
        table = step_table(args.metrics, dataset=args.dataset, task=args.task)
        if args.predictions_png and not args.predictions:
            raise ValueError("--predictions-png needs --predictions (every step's .npz)")
        if args.class_iou or args.confusion or args.predictions_png:
            from lgkd_core import figures

            if args.class_iou:
                figures.plot_class_iou(table, args.class_iou, args.title)
            if args.confusion or args.predictions_png:
                payloads = [json.loads(Path(m).read_text()) for m in args.metrics]
                final = max(payloads, key=lambda p: p["step"])
            if args.confusion:
                figures.plot_confusion(final, args.confusion, args.title)
            if args.predictions_png:
                dataset = args.dataset or final["dataset"]
                figures.plot_predictions(
                    args.predictions, dataset, args.predictions_png, args.title
                )
    else:
        members = {k: read_table(v) for k, v in parse_pairs(args.member, "--member").items()}
        table = sweep_table(members)
    write_csv(table, args.out)
    if args.plot:
        plot_miou(table, args.plot, args.title)
    return 0
