"""Result tables, sweep statistics, summary and plots from real confusion-matrix metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lgkd_core.cli import main
from lgkd_core.metrics import ConfusionMatrix
from lgkd_core.report import step_table, summary_table, sweep_table
from lgkd_core.tasks import get_task


def _metrics(task_name: str, step: int, seed: int) -> dict:
    """A metrics.json payload from a real confusion matrix of noisy predictions."""
    task = get_task("voc", task_name)
    n = task.num_classes(step)
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, n, (2, 32, 32), generator=g)
    noise = torch.randint(0, n, target.shape, generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target, noise)
    cm = ConfusionMatrix(n)
    cm.update(pred, target)
    return {"dataset": "voc", "task": task_name, "step": step, **cm.to_dict(task, step)}


def test_step_table_percent_running_mean_and_class_columns(tmp_path):
    payloads = [_metrics("15-5s", s, seed=s) for s in range(3)]
    paths = []
    for p in payloads:
        paths.append(tmp_path / f"m{p['step']}.json")
        paths[-1].write_text(json.dumps(p))
    table = step_table(list(reversed(paths)))
    assert list(table["step"]) == [0, 1, 2]
    assert list(table["classes"]) == ["0-15", "16", "17"]
    alls = [100 * p["summary"]["all"] for p in payloads]
    np.testing.assert_allclose(table["all"], np.round(alls, 2))
    np.testing.assert_allclose(
        table["mean_all"], np.round(np.cumsum(alls) / [1, 2, 3], 2), atol=0.01
    )
    names = get_task("voc", "15-5s").channel_names(2)
    assert list(table.columns[-len(names) + 1 :]) == names[1:]  # background: its own column
    iou = payloads[2]["class_iou"]
    assert table.loc[2, "background"] == round(100 * iou["background"], 2)
    # Class 17 ("sheep" in VOC order) is not seen before step 2.
    assert table[names[17]].isna().tolist() == [True, True, False]
    assert table.loc[0, "new"] != table.loc[0, "new"]  # NaN: no new classes at step 0


def test_missing_step_and_bad_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"steps \[0, 2\]"):
        step_table([_metrics("15-5s", 0, 0), _metrics("15-5s", 2, 0)])
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"m\.json is not valid JSON"):
        step_table([bad])
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        step_table([tmp_path / "missing.json"])


def test_sweep_mean_std_by_class_name_and_summary():
    # Two class orders: the same class sits in different columns/steps; stats go by name.
    a = step_table([_metrics("15-5s", s, seed=10 + s) for s in range(2)])
    b = step_table([_metrics("15-5s_b", s, seed=20 + s) for s in range(2)])
    sweep = sweep_table({"a": a, "b": b})
    assert list(sweep["step"]) == [0, 1] and set(sweep["members"]) == {2}
    np.testing.assert_allclose(sweep["old"], np.round((a["old"] + b["old"]) / 2, 2), atol=0.01)
    expected_std = np.std(np.stack([a["all"], b["all"]]), axis=0, ddof=1)
    np.testing.assert_allclose(sweep["all_std"], np.round(expected_std, 2), atol=0.01)
    for name in set(a.columns) & set(b.columns) - {"step", "classes"}:
        both = pd.concat([a[name], b[name]], axis=1).astype(float)
        np.testing.assert_allclose(sweep[name], both.mean(axis=1).round(2), atol=0.01)
    with pytest.raises(ValueError, match="member b has steps"):
        sweep_table({"a": a, "b": b.iloc[:1]})
    summary = summary_table({"plain": a, "sweep": sweep})
    assert list(summary["experiment"]) == ["plain", "sweep"]
    assert summary.loc[0, "all"] == a.iloc[-1]["all"] and "all_std" in summary
    assert summary.loc[1, "step0_all"] == sweep.loc[0, "all"]


def test_cli_round_trip(tmp_path):
    metrics = []
    for s in range(2):
        metrics.append(tmp_path / f"step{s}.json")
        metrics[-1].write_text(json.dumps(_metrics("15-5s", s, seed=s)))
    table, plot = tmp_path / "table.csv", tmp_path / "miou.png"
    argv = ["report", "table", "--metrics", *map(str, metrics), "--out", str(table)]
    assert main([*argv, "--plot", str(plot), "--title", "t"]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sweep = tmp_path / "sweep.csv"
    argv = ["report", "sweep", "--member", f"x={table}", f"y={table}", "--out", str(sweep)]
    assert main([*argv, "--plot", str(tmp_path / "s.png")]) == 0
    assert (pd.read_csv(sweep)["all_std"] == 0).all()
    summary = tmp_path / "summary.csv"
    assert main(["report", "summary", "--table", f"e={sweep}", "--out", str(summary)]) == 0
    assert pd.read_csv(summary).loc[0, "experiment"] == "e"
    assert main(["report", "summary", "--table", f"e={tmp_path / 'nope.csv'}",
                 "--out", str(summary)]) == 2  # fmt: skip
