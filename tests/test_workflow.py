"""The Snakemake workflow: planning (dry runs), config validation, lint, and a real reduced run
with the resume behaviours (nothing to do, one step deleted, one hyper-parameter changed)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import lgkd_core
from lgkd_core import experiments as X
from lgkd_core import figures
from lgkd_core.engine.checkpoint import load_model_file
from lgkd_core.html_report import RUN_FIGURES
from lgkd_core.tasks import get_task

from browser import open_page
from helpers import counts, planned_jobs, snakemake

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


# -- planning --------------------------------------------------------------------------------
def test_dry_run_voc_15_1_plans_the_chain(tmp_path):
    proc = snakemake(["-n", "results/voc_15-1/table.csv"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout)
    # Step 0 is trained by the setting's shared step-0 run and linked into results/voc_15-1.
    c = counts(jobs)
    # Rule train makes the shared run's step 0; train_incremental the linked run's steps 1-5.
    assert (c["download"], c["train"], c["train_incremental"]) == (1, 1, 5), c
    assert (c["evaluate"], c["table"]) == (6, 1), c
    # model.pt and metrics.json linked; one image-list folder for the run and its shared step 0.
    assert c["share_step0"] == 3 and c["prepare_splits"] == 1, c
    trains = {int(re.search(r"step(\d)", j["output"][0]).group(1)): j for j in jobs
              if j["rule"].startswith("train")}  # fmt: skip
    assert sorted(trains) == list(range(6))
    assert "data/PascalVOC2012/.done" in trains[0]["input"]
    for step in range(1, 6):
        # The DAG carries the teacher chain: step s reads step s-1's model.
        assert f"results/voc_15-1/step{step - 1}/model.pt" in trains[step]["input"]
    evals = [j for j in jobs if j["rule"] == "evaluate"]
    assert all(j["input"][0].endswith("model.pt") for j in evals)
    # The training command: paper hyper-parameters, global batch, torchrun over 2 GPUs.
    proc = snakemake(["-n", "-p", "results/voc_15-1/step1/model.pt"], tmp_path)
    cmd = next(line for line in proc.stdout.splitlines() if "--step 1" in line)
    # The job's threads (cpus: 16, capped by Snakemake at --cores) go to the launcher, which
    # divides them between the ranks (tests/test_launch_import.py).
    launch = r"launch --log logs/voc_15-1/step1/train\.log --nproc-per-node=2 --nnodes=1 "
    launch += r"--threads=\d+"
    assert re.search(rf"{launch} -- train ", cmd), cmd
    expected = ["--task 15-1", "--method LGKD", "--epochs 30", "--batch-size 24", "--lr 0.001",
                "--teacher results/voc_15-1/step0/model.pt", "--amp fp16", "--overlap"]  # fmt: skip
    for part in expected:
        assert part in cmd, (part, cmd)
    cmd0 = next(line for line in proc.stdout.splitlines() if "--step 0" in line)
    assert "--batch-size 16" in cmd0 and "--lr 0.01 " in cmd0


def test_dry_run_default_target_compares_every_method_from_one_step0(tmp_path):
    proc = snakemake(["-n"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout)
    c = counts(jobs)
    # 11 methods x 5 incremental steps, one shared step 0 and the Joint model; each method links
    # the shared model.pt and metrics.json, Joint's metrics.json is linked for compare.
    assert c["synthesize"] == 1 and c["compare"] == 1 and c["table"] == 11
    assert c["train"] == 2 and c["train_incremental"] == 11 * 5 and c["evaluate"] == 11 * 5 + 2
    assert c["share_step0"] == 3 * 11 + 1, c
    ft0 = next(j for j in jobs if j["rule"] == "share_step0"
               and j["output"][0] == "results/synthetic_15-1_ft/step0/model.pt")  # fmt: skip
    lgkd0 = next(j for j in jobs if j["rule"] == "share_step0"
                 and j["output"][0] == "results/synthetic_15-1/step0/model.pt")  # fmt: skip
    assert ft0["input"] == lgkd0["input"] and ft0["input"][0].startswith("results/step0-synthetic")
    proc = snakemake(["-n", "results/synthetic_15-1_seeds/table.csv"], tmp_path)
    jobs = planned_jobs(proc.stdout)
    assert counts(jobs)["sweep_table"] == 1 and counts(jobs)["table"] == 3
    sweep = next(j for j in jobs if j["rule"] == "sweep_table")
    assert sorted(sweep["input"]) == [
        f"results/synthetic_15-1_seeds/members/15-1-seed{s}/table.csv" for s in (1, 2, 3)
    ]


def test_lint_is_clean():
    """What `make lint` checks: Snakemake's linter, snakefmt, ruff's lints and formatting."""
    proc = snakemake(["--lint"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr
    bin_dir = Path(sys.executable).parent
    for cmd in (["snakefmt", "--check", "Snakefile", "workflow/"], ["ruff", "check", "."],
                ["ruff", "format", "--check", "."]):  # fmt: skip
        proc = subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], cwd=REPO, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])


# -- configuration errors --------------------------------------------------------------------
BAD_CONFIGS = [
    ({"epoch": 3}, ["epoch", "unexpected"]),
    ({"epochs": "ten"}, ["ten", "integer"]),
    ({"method": "LKGD"}, ["LKGD", "LGKD", "PLOP"]),
    ({"task": "15-2"}, ["experiments.bad.task", "15-2", "15-1", "19-1"]),
    ({"dataset": "cityscapes"}, ["cityscapes", "voc", "ade"]),
    ({"loss": {"prev_kdd": 1}}, ["experiments.bad.loss", "prev_kdd", "prev_kd"]),
    ({"orders": ["15-5s_b", "15-5"]}, ["experiments.bad.orders", "15-5"]),
]


@pytest.mark.parametrize(("change", "words"), BAD_CONFIGS)
def test_config_errors_name_the_key_before_any_job(tmp_path, change, words):
    exp = {"dataset": "voc", "task": "15-1", "method": "LGKD", **change}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"experiments": {"bad": exp}}))
    proc = snakemake(["-n", "--configfile", str(tmp_path / "bad.yaml")], tmp_path)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    for word in words:
        assert word in message, (word, message[-2000:])
    assert "Building DAG" not in message and not (tmp_path / "results").exists()


def test_experiment_name_cannot_escape_results(tmp_path):
    exp = {"dataset": "synthetic", "task": "15-1", "method": "FT"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"experiments": {"../evil": exp}}))
    proc = snakemake(["-n", "--configfile", str(tmp_path / "bad.yaml")], tmp_path)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "../evil" in message and "pattern" in message
    # A path that is not a configured run matches no rule.
    proc = snakemake(["-n", "results/../../etc/table.csv"], tmp_path)
    assert proc.returncode != 0


# -- a real reduced run ----------------------------------------------------------------------
# .test/config/config.yaml: a setting with a cross-section of the methods (every one trains two
# steps in-process in test_baselines_train.py), its Joint, and a step0_checkpoint run.
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"
TINY = yaml.safe_load(TEST_CONFIG.read_text())
TINY_METHODS = TINY["settings"]["tiny"]["methods"]


def _planned(workdir: Path, *extra: str) -> list[dict]:
    proc = snakemake(["-n", *extra], workdir)
    assert proc.returncode == 0, proc.stderr
    return planned_jobs(proc.stdout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir, config file) of one finished workflow run of TINY: `snakemake --cores 2`."""
    workdir = tmp_path_factory.mktemp("tiny")
    cfg = workdir / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    proc = snakemake(["--cores", "2", "--configfile", str(cfg)], workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, cfg


@pytest.mark.slow
def test_one_command_compares_methods_trained_from_one_step0(tiny_run):
    workdir, _ = tiny_run
    results = workdir / "results"
    table = pd.read_csv(results / "tiny" / "compare.csv").set_index("method")
    assert list(table.index) == [*TINY_METHODS, "Joint"]
    assert (table.loc[TINY_METHODS, "steps"] == 2).all() and table.loc["Joint", "steps"] == 1
    assert table[["old", "new", "all"]].notna().all().all()
    assert (table["init"] == "random").all()  # pretrained: none for the synthetic backbone
    assert table["published_all"].isna().all()  # nothing is published for the synthetic set
    assert (results / "tiny" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    exps = X.resolve_settings({**CONFIG, **TINY})["tiny"].experiments
    # One step 0 for all methods: relative links to one file (no copies), the same scores.
    (shared,) = results.glob("step0-synthetic-15-5-*")
    for exp in exps.values():
        for name in ("model.pt", "metrics.json"):
            link = results / exp / "step0" / name
            assert link.is_symlink() and not Path(os.readlink(link)).is_absolute()
            assert link.resolve() == (shared / "step0" / name).resolve()
    step0 = {pd.read_csv(results / e / "table.csv").loc[0, "all"] for e in exps.values()}
    assert len(step0) == 1
    # The run with step0_checkpoint imported that file: same weights, same step-0 scores.
    released = pd.read_csv(results / "tiny_released" / "table.csv")
    assert list(released["step"]) == [0, 1] and released.loc[0, "all"] in step0
    summary = pd.read_csv(results / "summary.csv")
    assert list(summary["experiment"]) == ["tiny_released"]  # default_experiments only
    # Each step 1 trained with its own loss terms, the regulariser with its penalty, no resume.
    log = (workdir / "logs" / exps["EWC"] / "step1" / "train.log").read_text()
    assert "reg=" in log and "resuming" not in log, log[-1500:]
    # Threads through the rule: step 0 runs alone on 2 cores (cpus_step0: 2), the incremental
    # steps on 1 each (cpus: 1); one process, no loader workers. The log is attempt 1's.
    log0 = workdir / "logs" / shared.name / "step0" / "train.log"
    assert os.readlink(log0) == "train.1.log"
    assert "OMP_NUM_THREADS=2" in log0.read_text() and "OMP_NUM_THREADS=1" in log
    assert "world size 1 on " in log and ", 1 threads per rank, global batch 16 " in log
    # Provenance in the model and the scores: code, versions, job shape, configuration.
    model = load_model_file(results / exps["EWC"] / "step1" / "model.pt")
    prov = model["provenance"]
    assert prov["lgkd_core"] == lgkd_core.__version__ and prov["torch"] == torch.__version__
    assert (prov["world_size"], prov["threads_per_rank"], prov["global_batch"]) == (1, 1, 16)
    assert prov["config"]["method"] == "EWC" and prov["wall_time_s"] > 0
    assert prov["hosts"] == [socket.gethostname()]
    metrics = json.loads((results / exps["EWC"] / "step1" / "metrics.json").read_text())
    assert metrics["provenance"]["train"] == prov
    assert metrics["provenance"]["evaluate"]["torch"] == torch.__version__
    assert not list((results / "tiny" / "step1" / "state").glob("*.pt"))
    table = pd.read_csv(results / "tiny" / "table.csv")
    assert list(table["step"]) == [0, 1]
    assert {"background", "old", "new", "all", "mean_all", "init"} <= set(table.columns)
    assert (results / "tiny" / "miou.png").read_bytes()[:4] == b"\x89PNG"
    # The per-class heatmap holds every class at every step; the confusion matrix of the final
    # step has its background / old / new blocks, each ground-truth row summing to 1.
    heat = figures.class_iou_matrix(table)
    assert heat.shape == (21, 2) and heat.index[0] == "background"
    assert heat[0].notna().sum() == 16 and heat[1].notna().sum() >= 16  # 5 classes added
    metrics1 = json.loads((results / "tiny" / "step1" / "metrics.json").read_text())
    cm, names, num_old = figures.confusion_blocks(metrics1)
    assert cm.shape == (21, 21) and len(names) == 21 and num_old == 15
    present = np.asarray(metrics1["confusion_matrix"]).sum(axis=1) > 0
    assert np.allclose(cm.sum(axis=1)[present], 1.0)
    # Predictions: the split preparation's showcase images, every step's argmax in dataset ids
    # (only classes that step knows), the figure one column per step plus image and truth.
    (splits,) = (results / "_splits" / "synthetic").glob("15-5-*")
    showcase = (splits / "showcase.txt").read_text().split()
    assert 1 <= len(showcase) <= 4
    task = get_task("synthetic", "15-5")
    shown = []
    for step in (0, 1):
        with np.load(results / "tiny" / f"step{step}" / "predictions.npz") as arrays:
            assert list(arrays["ids"]) == showcase and int(arrays["step"]) == step
            for k in range(len(showcase)):
                image, label, pred = (arrays[f"{n}_{k}"] for n in ("image", "label", "pred"))
                assert image.dtype == np.uint8 and image.shape == (3, 64, 64)
                assert label.shape == pred.shape == (64, 64)
                assert set(np.unique(pred)) <= set(task.classes_seen(step))
                shown.append(set(np.unique(label)) - {0, 255})
    # Showcase images hold a step-0 class and a class of step 1.
    assert all(c & set(task.base_classes()) and c & set(task.new_classes(1)) for c in shown)
    grid = figures.plot_predictions(
        sorted((results / "tiny").glob("step*/predictions.npz")), "synthetic", workdir / "p.png"
    )
    assert grid == (len(showcase), 2 + 2)
    for name in ("class_iou.png", "confusion.png", "predictions.png"):
        with Image.open(results / "tiny" / name) as png:
            assert png.format == "PNG" and min(png.size) >= 300, (name, png.size)
    # Every result and log respects the umask (0644 under 022): the group can read them.
    mask = os.umask(0)
    os.umask(mask)
    files = [p for d in ("results", "logs") for p in (workdir / d).rglob("*") if p.is_file()]
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {oct(0o666 & ~mask)}, modes


@pytest.mark.slow
def test_report_holds_the_flagged_tables_and_plots(tiny_run):
    workdir, cfg = tiny_run
    report = workdir / "report.html"
    proc = snakemake(["--report", str(report), "--configfile", str(cfg)], workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert report.stat().st_size > 10_000
    for name in ("miou.png", "class_iou.png", "confusion.png", "predictions.png", "compare.png"):
        assert f"Adding {name}" in out, (name, out[-2000:])


@pytest.mark.slow
def test_html_report_shows_every_figure_in_chromium(tiny_run, tmp_path):
    """results/report.html (rule html_report, part of the default target) rendered by headless
    Chromium: every figure of the setting and of the experiment decoded at its file's size."""
    workdir, _ = tiny_run
    results = workdir / "results"
    page = results / "report.html"
    text = page.read_text()
    runs = list(X.resolve_settings({**CONFIG, **TINY})["tiny"].experiments.values())
    runs.append("tiny_released")
    expected = [results / "tiny" / "compare.png"]
    expected += [results / r / f"{k}.png" for r in runs for k in RUN_FIGURES]
    for run in runs:
        assert f'id="{run}"' in text, run
    assert text.count("Provenance of step 1") == len(runs)
    assert "is missing" not in text
    with open_page(page.as_uri()) as browser:
        shown = browser.evaluate(
            "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        shot = browser.screenshot(tmp_path / "report.png")
    sizes = []
    for path in expected:
        with Image.open(path) as png:
            sizes.append([True, *png.size])
    assert shown == sizes
    with Image.open(shot) as png:
        assert png.size[0] >= 1280 and png.size[1] > 1600, png.size  # the whole page


@pytest.mark.slow
def test_finished_run_reruns_only_what_changed(tiny_run):
    """Runs last in this module: it deletes a model and changes the config."""
    workdir, cfg = tiny_run
    # Finished: nothing to do.
    proc = snakemake(["-n", "--configfile", str(cfg)], workdir)
    assert "Nothing to be done" in proc.stdout + proc.stderr

    # One step's model deleted: that step, its evaluation and the tables only.
    (workdir / "results" / "tiny" / "step1" / "model.pt").unlink()
    jobs = _planned(workdir, "--configfile", str(cfg))
    trains = [j["output"][0] for j in jobs if j["rule"].startswith("train")]
    assert trains == ["results/tiny/step1/model.pt"], jobs
    c = counts(jobs)
    assert (c["evaluate"], c["table"], c["compare"]) == (1, 1, 1), c

    # A hyper-parameter of one experiment changed: that experiment's affected steps only.
    changed = yaml.safe_load(cfg.read_text())
    changed["experiments"]["tiny_released"]["lr"] = 0.002
    cfg.write_text(yaml.safe_dump(changed))
    target = ["results/tiny/compare.csv", "--cores", "2", "--configfile", str(cfg)]
    proc = snakemake(target, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _planned(workdir, "--configfile", str(cfg))
    trains = sorted(j["output"][0] for j in jobs if j["rule"].startswith("train"))
    assert trains == ["results/tiny_released/step1/model.pt"], trains


@pytest.mark.slow
def _status(workdir: Path, *args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "lgkd_core", "status", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.startswith("tiny ")]


def test_killed_workflow_resumes_the_step_from_its_checkpoint(tmp_path):
    """SIGKILL snakemake and its training job mid-step; the same command continues from state/."""
    cfg = tmp_path / "tiny.yaml"
    tiny = {
        "synthetic": TINY["synthetic"], "default_settings": [], "default_experiments": ["tiny"],
        "experiments": {"tiny": {"dataset": "synthetic", "task": "15-5", "method": "LGKD",
                                 "epochs_step0": 1, "epochs": 6, "head_channels": 32}},
    }  # fmt: skip
    cfg.write_text(yaml.safe_dump(tiny))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--cores", "2", "--configfile", str(cfg)]  # fmt: skip
    state = tmp_path / "results" / "tiny" / "step1" / "state"
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not list(state.glob("ckpt-*.pt")):
            assert proc.poll() is None, "the workflow ended before step 1 wrote a checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the job: a node going away
        proc.wait(timeout=60)
    step0 = tmp_path / "results" / "tiny" / "step0" / "model.pt"
    assert step0.exists() and not (state.parent / "model.pt").exists()
    before = step0.stat().st_mtime_ns
    # `status` tells the half-finished run from the files: step 0 linked from the shared step-0
    # run and evaluated there, step 1 stopped at
    # its newest checkpoint (an old log counts as stopped: --stale 0).
    newest = int(sorted(state.glob("ckpt-*.pt"))[-1].stem.removeprefix("ckpt-"))
    lines = _status(tmp_path, "--stale", "0")
    assert re.match(
        r"tiny +step0 +linked .*mIoU old [\d.]+ new - all [\d.]+ +\(from step0-", lines[0]
    )
    assert re.match(rf"tiny +step1 +stopped +epoch \d+/6 +it {newest}/\d+ ", lines[1]), lines
    # Snakemake itself was killed too: its lock stays (its own safety), --unlock lifts it; the
    # profile's rerun-incomplete then lets the same command start again.
    assert snakemake(["--unlock", "--configfile", str(cfg)], tmp_path).returncode == 0
    done = snakemake(["--cores", "2", "--configfile", str(cfg)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = tmp_path / "logs" / "tiny" / "step1"
    log = (logs / "train.log").read_text()
    assert "resuming step 1 from" in log, log[-2000:]
    # The killed attempt's log is kept beside the one that finished.
    assert os.readlink(logs / "train.log") == "train.2.log"
    first = (logs / "train.1.log").read_text()
    assert "step 1: world size 1" in first and "step 1 done" not in first and "step 1 done" in log
    assert step0.stat().st_mtime_ns == before, "finished steps are not re-run"
    assert (tmp_path / "results" / "tiny" / "table.csv").exists()
    # Finished: every step has its scores; --follow returns once nothing is running.
    table = pd.read_csv(tmp_path / "results" / "tiny" / "table.csv")
    lines = _status(tmp_path, "--follow", "0.1")
    assert [line.split()[:3] for line in lines] == [
        ["tiny", "step0", "linked"],
        ["tiny", "step1", "done"],
    ]
    assert lines[1].endswith(f"all {table.loc[1, 'all']:.2f}"), (lines, table)
