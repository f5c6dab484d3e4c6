"""Settings (every method of a setting from one entry), the shared step 0, Joint's per-setting
scores, and compare.csv with the published numbers."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lgkd_core import compare
from lgkd_core import experiments as X
from lgkd_core.cli import main as cli_main
from lgkd_core.published import PUBLISHED, published
from lgkd_core.tasks import get_task

from helpers import planned_jobs, snakemake

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
PAPER_SETTINGS = ["voc_15-1", "voc_15-5", "voc_19-1", "voc_10-1",
                  "ade_100-50", "ade_100-10", "ade_50-50", "ade_100-5"]  # fmt: skip
PAPER_METHODS = ["LGKD", "FT", "LwF", "LwF-MC", "ILT", "EWC", "PI", "RW", "MiB", "PLOP", "MiB+LGKD"]


def _config(**settings) -> dict:
    cfg = copy.deepcopy(CONFIG)
    cfg["settings"] = settings
    cfg["experiments"] = {"vj": {"dataset": "voc", "task": "offline", "method": "Joint"}}
    return cfg


# -- expansion ---------------------------------------------------------------------------------
def test_every_paper_setting_has_every_method_and_joint():
    settings = X.resolve_settings(CONFIG)
    experiments = X.resolve(CONFIG)
    for name in [*PAPER_SETTINGS, "synthetic_15-1"]:
        s = settings[name]
        assert list(s.experiments) == PAPER_METHODS
        assert s.experiments["LGKD"] == name  # the main method is named after the setting
        assert s.experiments["MiB+LGKD"] == f"{name}_mib-lgkd"
        assert s.experiments["LwF-MC"] == f"{name}_lwf-mc"
        for method, exp in s.experiments.items():
            assert experiments[exp].method == method and experiments[exp].task == s.task
        joint = experiments[s.joint]
        assert joint.method == "Joint" and joint.task == "offline" and joint.dataset == s.dataset


def test_recipes_follow_the_scripts_per_method():
    exps = X.resolve(CONFIG)
    # plop_10-1.sh: 30 epochs at step 0, 10 at the incremental steps; the others keep 30.
    assert exps["voc_10-1_plop"].get("epochs", 1) == 10
    assert exps["voc_10-1_plop"].get("epochs", 0) == 30
    assert exps["voc_10-1"].get("epochs", 1) == 30
    # Global batch: VOC 15-1 16 / 24, ADE 100-10 16 / 16, joint.sh 16.
    assert exps["voc_15-1_mib"].get("batch_size", 0) == 16
    assert exps["voc_15-1_mib"].get("batch_size", 1) == 24
    assert exps["ade_100-10_ewc"].get("batch_size", 1) == 16
    assert exps["voc_joint"].get("batch_size", 0) == 16
    assert exps["ade_joint"].get("lr_step0", 0) == 0.02


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ({"dataset": "voc", "task": "15-1", "methods": ["LGKD", "Joint"]}, ["Joint", "offline"]),
        ({"dataset": "voc", "task": "15-1", "methods": ["LGKD", "LGKD"]}, ["twice"]),
        ({"dataset": "voc", "task": "15-1", "methods": ["LGDK"]}, ["settings.s.methods", "LGDK"]),
        ({"dataset": "voc", "task": "15-1", "methods": ["FT"], "main": "PLOP"},
         ["settings.s.main"]),
        ({"dataset": "voc", "task": "15-1", "methods": ["FT"], "per_method": {"MiB": {}}},
         ["settings.s.per_method.MiB"]),
        ({"dataset": "voc", "task": "15-1", "methods": ["FT"], "joint": "nope"},
         ["settings.s.joint", "nope"]),
        ({"dataset": "ade", "task": "100-50", "methods": ["FT"], "joint": "vj"},
         ["settings.s.joint", "voc"]),
        ({"dataset": "voc", "task": "15-1", "methods": ["LGKD", "EWC"], "step0_importance": False},
         ["experiments.s_ewc", "step0_importance"]),
    ],
)  # fmt: skip
def test_setting_errors_name_the_key(setting, words):
    with pytest.raises(X.ConfigError) as err:
        X.resolve(_config(s=setting))
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_generated_name_clash_and_joint_task_are_refused():
    cfg = _config(s={"dataset": "voc", "task": "15-1", "methods": ["LGKD", "FT"]})
    cfg["experiments"]["s_ft"] = {"dataset": "voc", "task": "15-1", "method": "FT"}
    with pytest.raises(X.ConfigError, match="s_ft"):
        X.resolve(cfg)
    cfg = _config()
    cfg["experiments"]["j"] = {"dataset": "voc", "task": "15-1", "method": "Joint"}
    with pytest.raises(X.ConfigError, match=r"experiments\.j\.task"):
        X.resolve(cfg)
    cfg = _config()
    cfg["experiments"]["step0-mine"] = {"dataset": "voc", "task": "15-1", "method": "FT"}
    with pytest.raises(X.ConfigError, match="step0-"):
        X.resolve(cfg)


# -- shared step 0 -----------------------------------------------------------------------------
def test_methods_of_a_setting_share_one_step0_and_recipes_split_it():
    exps = X.resolve(CONFIG)
    for name in PAPER_SETTINGS:
        s = X.resolve_settings(CONFIG)[name]
        runs = {exps[e].members[0].shared_step0 for e in s.experiments.values()}
        assert len(runs) == 1, (name, runs)
        (run,) = runs
        assert exps[run].is_shared_step0 and exps[run].task == s.task
    # Seeds, class orders and anything step 0 trains with give their own step 0.
    seeds = {m.shared_step0 for m in exps["synthetic_15-1_seeds"].members}
    assert len(seeds) == 3 and exps["synthetic_15-1"].members[0].shared_step0 not in seeds
    base = {"dataset": "voc", "task": "15-1", "method": "LGKD"}
    cfg = _config()
    cfg["experiments"].update(a=dict(base), b={**base, "method": "FT", "lr": 0.5},
                              c={**base, "lr_step0": 0.5}, d={**base, "workers": 9})  # fmt: skip
    exps = X.resolve(cfg)
    a, b, c, d = (exps[k].members[0].shared_step0 for k in "abcd")
    assert a == b == d != c  # a later-step lr and the loader workers do not reach step 0
    # A released step-0 model is imported, never shared.
    cfg["experiments"]["e"] = {**base, "step0_checkpoint": "released.pth"}
    assert X.resolve(cfg)["e"].members[0].shared_step0 is None


# -- Joint scored per setting ------------------------------------------------------------------
def _joint_metrics(rng: np.random.Generator) -> dict:
    names = get_task("voc", "offline").class_names
    iou = {n: float(v) for n, v in zip(names, rng.uniform(0.3, 0.9, len(names)), strict=True)}
    iou[names[7]] = None  # a class without pixels in the validation images
    return {"step": 0, "class_iou": iou, "init": "imagenet-iabn"}


@pytest.mark.parametrize("task_name", ["15-1", "19-1", "10-1", "15-5s_b"])
def test_joint_scores_regroup_the_offline_model_by_the_settings_split(task_name):
    metrics = _joint_metrics(np.random.default_rng(1))
    task = get_task("voc", task_name)
    got = compare.joint_scores(metrics, task)
    iou = metrics["class_iou"]
    names = task.class_names
    first = [names[c] for c in task.steps[0] if c != 0]
    later = [names[c] for s in task.steps[1:] for c in s]
    for group, members in (("old", first), ("new", later), ("all", list(names))):
        vals = [iou[n] for n in members if iou[n] is not None]
        assert got[group] == pytest.approx(100 * sum(vals) / len(vals), abs=1e-9)
    assert math.isnan(got["mean_all"])


def test_joint_from_another_dataset_is_refused():
    bad = {"class_iou": {"background": 0.9, "aeroplane": 0.5}}
    with pytest.raises(ValueError, match="offline"):
        compare.joint_scores(bad, get_task("voc", "15-1"), "x.json")


# -- compare.csv -------------------------------------------------------------------------------
def _table(values: list[tuple[float, float, float]], init: str = "imagenet-iabn") -> pd.DataFrame:
    rows = []
    for step, (old, new, all_) in enumerate(values):
        rows.append({"step": step, "old": old, "new": new if step else np.nan, "all": all_,
                     "init": init})  # fmt: skip
    table = pd.DataFrame(rows)
    table["mean_all"] = table["all"].expanding().mean()
    return table


def test_compare_table_puts_published_numbers_and_differences_beside_ours():
    plop = _table([(80.0, 0, 81.0), (70.0, 30.0, 60.0)])
    lgkd = _table([(80.0, 0, 81.0), (72.5, 25.0, 61.25)])
    metrics = _joint_metrics(np.random.default_rng(2))
    out = compare.compare_table("voc", "15-1", [("LGKD", "e1", lgkd), ("PLOP", "e2", plop)],
                                ("vj", metrics))  # fmt: skip
    assert list(out["method"]) == ["LGKD", "PLOP", "Joint"]
    row = out.set_index("method").loc["PLOP"]
    ref = PUBLISHED[("voc", "15-1")]["PLOP"]
    assert row["old"] == 70.0 and row["published_old"] == ref.old
    assert row["diff_all"] == pytest.approx(60.0 - ref.all)
    assert row["diff_mean_all"] == pytest.approx((81.0 + 60.0) / 2 - ref.mean_all)
    assert "PLOP paper" in row["source"] and row["init"] == "imagenet-iabn" and row["steps"] == 2
    lg = out.set_index("method").loc["LGKD"]
    assert math.isnan(lg["published_all"]) and lg["source"] == ""  # nothing published to cite
    joint = out.set_index("method").loc["Joint"]
    assert joint["published_all"] == 77.4 and joint["experiment"] == "vj"
    assert published("voc", "15-5s", "MiB") == published("voc", "15-1", "MiB")
    assert published("synthetic", "15-1", "MiB") is None


def test_compare_cli_writes_csv_and_png_and_names_bad_input(tmp_path):
    paths = {}
    for method, final in (("LGKD", 60.0), ("FT", 5.0)):
        paths[method] = tmp_path / f"{method}.csv"
        _table([(80.0, 0, 81.0), (final, 10.0, final)]).to_csv(paths[method], index=False)
    joint = tmp_path / "joint.json"
    joint.write_text(json.dumps(_joint_metrics(np.random.default_rng(3))))
    out, png = tmp_path / "compare.csv", tmp_path / "compare.png"
    args = ["compare", "--dataset", "voc", "--task", "15-1", "--out", str(out), "--plot", str(png),
            "--method", f"LGKD=voc_15-1={paths['LGKD']}",
            "--method", f"FT=voc_15-1_ft={paths['FT']}",
            "--joint", f"voc_joint={joint}"]  # fmt: skip
    assert cli_main(args) == 0
    table = pd.read_csv(out)
    assert list(table["method"]) == ["LGKD", "FT", "Joint"]
    assert table.loc[1, "published_all"] == 0.6 and table.loc[1, "diff_all"] == 4.4
    assert png.read_bytes()[:4] == b"\x89PNG"
    missing = [*args[:-2], "--joint", f"voc_joint={tmp_path / 'none.json'}"]
    assert cli_main(missing) == 2
    bad = [a if not a.startswith("FT=") else "FT=only-two" for a in args]
    assert cli_main(bad) == 2


# -- the workflow: dry runs of the paper's settings (the real comparison: test_workflow.py) --------
def test_dry_run_of_the_paper_settings_trains_each_step0_once(tmp_path):
    targets = [f"results/{s}/compare.csv" for s in PAPER_SETTINGS]
    proc = snakemake(["-n", *targets], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    step0 = [j for j in jobs if j["rule"] == "train" and j["output"][0].endswith("step0/model.pt")]
    # One step 0 per setting and one per dataset's Joint: 8 + 2, not 8 x 11 + 2.
    assert len(step0) == len(PAPER_SETTINGS) + 2, [j["output"] for j in step0]
    assert all(j["output"][0].startswith("results/step0-") for j in step0)
    shares = {j["output"][0]: j["input"][0] for j in jobs if j["rule"] == "share_step0"}
    settings = X.resolve_settings(CONFIG)
    for name in PAPER_SETTINGS:
        links = {shares[f"results/{e}/step0/model.pt"] for e in settings[name].experiments.values()}
        assert len(links) == 1  # every method of the setting links the same model
    assert sum(j["rule"] == "compare" for j in jobs) == len(PAPER_SETTINGS)
    # Step 1 of every method reads its own (linked) step 0 as the teacher.
    for exp in settings["voc_15-1"].experiments.values():
        step1 = next(j for j in jobs if j["output"] == [f"results/{exp}/step1/model.pt"])
        assert f"results/{exp}/step0/model.pt" in step1["input"]
