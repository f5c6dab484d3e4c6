"""Run tables, sweep statistics, summary, plot and CLI from real confusion-matrix metrics.

Expected numbers are recomputed here with numpy from the same predictions (IoU by class as
|pred & target| / |pred | target|), independently of ``ConfusionMatrix``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lgkd_core.cli import main
from lgkd_core.io import atomic_write_json
from lgkd_core.metrics import ConfusionMatrix
from lgkd_core.report import plot_miou, step_table, summary_table, sweep_table
from lgkd_core.tasks import get_task


def _evaluation(dataset: str, task_name: str, step: int, seed: int, absent=()):
    """(payload as evaluate() writes it, {class name: IoU % from numpy}).

    ``absent``: original ids left out of the ground truth (their IoU must be empty).
    """
    task = get_task(dataset, task_name)
    n = task.num_classes(step)
    g = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([k for k, c in enumerate(task.order(step)) if c not in absent])
    target = allowed[torch.randint(0, len(allowed), (2, 24, 24), generator=g)]
    noise = torch.randint(0, n, target.shape, generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target, noise)
    cm = ConfusionMatrix(n)
    cm.update(pred, target)
    payload = {
        "dataset": dataset,
        "task": task_name,
        "step": step,
        "model": f"step{step}/model.pt",
        "method": "LGKD",
        "init": "imagenet-iabn",
        "num_images": 2,
        "crop_size": None,
        "classes": task.channel_names(step),
        "class_ids": task.order(step),
        **cm.to_dict(task, step),
    }
    p, t = pred.numpy(), target.numpy()
    expected = {}
    for k, name in enumerate(task.channel_names(step)):
        inter, union = ((p == k) & (t == k)).sum(), ((p == k) | (t == k)).sum()
        expected[name] = 100.0 * inter / union if (t == k).any() else math.nan
    return payload, expected


def _write(tmp_path, payloads) -> list:
    paths = []
    for i, p in enumerate(payloads):
        paths.append(tmp_path / f"m{i}" / "metrics.json")
        atomic_write_json(paths[-1], p)  # what evaluate() uses
    return paths


def _nanmean(values) -> float:
    return float(np.nanmean(np.asarray(values, dtype=float)))


def test_step_table_percent_running_mean_and_class_columns(tmp_path):
    task = get_task("synthetic", "15-1")
    names = task.channel_names(2)
    evals = [
        _evaluation("synthetic", "15-1", s, seed=s, absent=(3,) if s == 1 else ()) for s in range(3)
    ]
    table = step_table(list(reversed(_write(tmp_path, [p for p, _ in evals]))))

    assert list(table["step"]) == [0, 1, 2]
    assert list(table["classes"]) == ["0-15", names[16], names[17]]
    fixed = ["step", "classes", "init", "background", "old", "old_bg", "new", "all", "mean_all"]
    assert list(table.columns) == fixed + names[1:]
    assert list(table["init"]) == ["imagenet-iabn"] * 3
    alls = [_nanmean(list(e.values())) for _, e in evals]
    np.testing.assert_allclose(table["all"], alls, atol=0.006)
    np.testing.assert_allclose(table["mean_all"], np.cumsum(alls) / [1, 2, 3], atol=0.006)
    for s, (_, expected) in enumerate(evals):
        base = [expected[task.class_names[c]] for c in task.base_classes()]
        assert table.loc[s, "old"] == pytest.approx(_nanmean(base), abs=0.006)
        assert table.loc[s, "background"] == pytest.approx(expected[names[0]], abs=0.006)
        for name, value in expected.items():
            if name != names[0]:
                assert table.loc[s, name] == pytest.approx(value, abs=0.006, nan_ok=True)
    numbers = table.select_dtypes("number")
    assert ((numbers.round(2) == numbers) | numbers.isna()).all().all()  # 2 decimals
    assert math.isnan(table.loc[0, "new"])  # no new class at step 0
    assert table.loc[2, "new"] == pytest.approx(
        _nanmean([evals[2][1][n] for n in names[16:]]), abs=0.006
    )
    assert table[names[17]].isna().tolist() == [True, True, False]  # not seen before step 2
    assert table[names[3]].isna().tolist() == [False, True, False]  # no pixel at step 1


def test_dataset_and_task_from_arguments_and_clashing_class_names():
    # ADE's class 122 is called "step": its column must not replace the step column.
    payloads = [_evaluation("ade", "100-50", s, seed=s)[0] for s in range(2)]
    for p in payloads:
        del p["dataset"], p["task"]
    with pytest.raises(ValueError, match="pass --dataset and --task"):
        step_table(payloads)
    table = step_table(payloads, dataset="ade", task="100-50")
    assert list(table["step"]) == [0, 1] and list(table["classes"]) == ["0-100", "101-150"]
    assert "class:step" in table.columns and table.columns.tolist().count("step") == 1
    expected = 100 * payloads[1]["class_iou"]["step"]
    assert table.loc[1, "class:step"] == pytest.approx(expected, abs=0.006)


def test_bad_metrics_are_named(tmp_path):
    paths = _write(tmp_path, [_evaluation("voc", "15-1", s, seed=s)[0] for s in (0, 2)])
    with pytest.raises(ValueError, match=r"step\(s\) \[1\] missing") as err:
        step_table(paths)
    assert str(paths[0]) in str(err.value) and str(paths[1]) in str(err.value)
    dup = _write(tmp_path / "dup", [_evaluation("voc", "15-1", 0, seed=s)[0] for s in (0, 1)])
    with pytest.raises(ValueError, match="step 0 is given 2 times"):
        step_table(dup)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        step_table([bad])
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json holds a JSON list"):
        step_table([bad])
    bad.write_text(json.dumps({"step": 0, "class_iou": {}}))
    with pytest.raises(ValueError, match=r"bad\.json: 'summary' missing"):
        step_table([bad])
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        step_table([tmp_path / "missing.json"])
    other = [_evaluation("voc", "15-1", 0, 0)[0], _evaluation("voc", "15-5", 1, 0)[0]]
    with pytest.raises(ValueError, match=r"voc/15-5 but .* is voc/15-1"):
        step_table(other)
    beyond = [_evaluation("voc", "15-5", 0, 0)[0], _evaluation("voc", "15-1", 1, 0)[0]]
    beyond[1]["task"], beyond[1]["step"] = "15-5", 1
    beyond.append({**beyond[1], "step": 2})
    with pytest.raises(ValueError, match="step 2 does not exist in voc/15-5"):
        step_table(beyond)


def test_sweep_mean_std_by_class_name_and_summary():
    # Three class orders of 15-1: a class sits in different steps and columns in each member.
    orders = {"a": "15-1", "b": "15-5s_b", "c": "15-5s_c"}
    evals = {
        m: [_evaluation("voc", t, s, seed=10 * i + s) for s in range(3)]
        for i, (m, t) in enumerate(orders.items())
    }
    tables = {m: step_table([p for p, _ in ev]) for m, ev in evals.items()}
    sweep = sweep_table(tables)

    assert list(sweep["step"]) == [0, 1, 2] and set(sweep["members"]) == {3}
    assert list(sweep["classes"]) == ["mixed"] * 3
    assert list(sweep["init"]) == ["imagenet-iabn"] * 3 and "init_std" not in sweep
    for col in ("background", "old", "new", "all", "mean_all"):
        stack = np.stack([t[col].to_numpy(dtype=float) for t in tables.values()])
        np.testing.assert_allclose(sweep[col], stack.mean(0), atol=0.006)
        np.testing.assert_allclose(sweep[f"{col}_std"], stack.std(0, ddof=1), atol=0.006)
    # Per class, from the numpy IoUs by name, over the members that have seen it.
    for name in get_task("voc", "15-1").channel_names(2)[1:]:
        values = np.array(
            [[ev[s][1].get(name, math.nan) for ev in evals.values()] for s in range(3)]
        )
        for s, row in enumerate(values):
            seen = row[~np.isnan(row)]
            mean = seen.mean() if len(seen) else math.nan
            std = seen.std(ddof=1) if len(seen) > 1 else math.nan
            # Members' tables are rounded, then the mean: two roundings of 0.005 at most.
            assert sweep.loc[s, name] == pytest.approx(mean, abs=0.0101, nan_ok=True)
            assert sweep.loc[s, f"{name}_std"] == pytest.approx(std, abs=0.02, nan_ok=True)

    one = sweep_table({"a": tables["a"]})
    assert one["all"].tolist() == tables["a"]["all"].tolist() and one["all_std"].isna().all()
    assert list(one["classes"]) == list(tables["a"]["classes"])
    with pytest.raises(ValueError, match=r"member b has steps \[0\] but member a"):
        sweep_table({"a": tables["a"], "b": tables["b"].iloc[:1]})
    with pytest.raises(ValueError, match="member s is already a sweep table"):
        sweep_table({"s": sweep})

    summary = summary_table({"plain": tables["a"], "sweep": sweep})
    assert list(summary["experiment"]) == ["plain", "sweep"]
    assert list(summary["members"]) == [1, 3] and list(summary["steps"]) == [3, 3]
    assert summary.loc[0, "all"] == tables["a"].loc[2, "all"] and math.isnan(
        summary.loc[0, "all_std"]
    )
    assert summary.loc[1, "new_std"] == sweep.loc[2, "new_std"]
    assert summary.loc[1, "mean_all"] == sweep.loc[2, "mean_all"]
    assert summary.loc[1, "step0_all"] == sweep.loc[0, "all"]
    assert list(summary["init"]) == ["imagenet-iabn"] * 2
    with pytest.raises(ValueError, match=r"experiment x lacks columns \['new'\]"):
        summary_table({"x": tables["a"].drop(columns="new")})


def test_plot_is_a_png(tmp_path):
    tables = {
        m: step_table([_evaluation("voc", t, s, seed=s)[0] for s in range(2)])
        for m, t in (("a", "15-1"), ("b", "15-5s_b"))
    }
    for name, table in (("run", tables["a"]), ("sweep", sweep_table(tables))):
        path = tmp_path / f"{name}.png"
        plot_miou(table, path, title=name)
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size == (600, 400)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_cli_round_trip(tmp_path):
    payloads = [_evaluation("synthetic", "15-1", s, seed=s)[0] for s in range(3)]
    metrics = [str(p) for p in _write(tmp_path, payloads)]
    table, plot = tmp_path / "out" / "table.csv", tmp_path / "out" / "miou.png"
    argv = ["report", "table", "--metrics", *metrics[:2], "--metrics", metrics[2]]
    assert main([*argv, "--out", str(table), "--plot", str(plot), "--title", "t"]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = pd.read_csv(table, dtype={"classes": str})
    direct = step_table(payloads)
    assert list(back.columns) == list(direct.columns)
    pd.testing.assert_frame_equal(back, direct, check_dtype=False, atol=1e-9)

    sweep = tmp_path / "sweep.csv"
    argv = ["report", "sweep", "--member", f"x={table}", f"y={table}", "--out", str(sweep)]
    assert main([*argv, "--plot", str(tmp_path / "s.png")]) == 0
    sweep_back = pd.read_csv(sweep)
    assert (sweep_back["all_std"] == 0).all() and (sweep_back["members"] == 2).all()
    single = tmp_path / "single.csv"
    assert main(["report", "sweep", "--member", f"x={table}", "--out", str(single)]) == 0
    assert ",all_std," in single.read_text().splitlines()[0]
    assert pd.read_csv(single)["all_std"].isna().all()  # blank cells

    summary = tmp_path / "summary.csv"
    argv = ["report", "summary", "--table", f"run={table}", f"sweep={sweep}", "--out"]
    assert main([*argv, str(summary)]) == 0
    assert pd.read_csv(summary)["experiment"].tolist() == ["run", "sweep"]

    # Bad input: exit 2, nothing written.
    gap = tmp_path / "gap.csv"
    assert main(["report", "table", "--metrics", metrics[0], metrics[2], "--out", str(gap)]) == 2
    nope = f"e={tmp_path / 'nope.csv'}"
    assert main(["report", "summary", "--table", nope, "--out", str(gap)]) == 2
    assert main(["report", "sweep", "--member", str(table), "--out", str(gap)]) == 2
    assert not gap.exists()
