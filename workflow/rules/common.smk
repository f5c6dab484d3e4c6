# Configuration resolution and small helpers shared by the rules (logic: lgkd_core.experiments).
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from lgkd_core import experiments as X
from lgkd_core.data import pretrained as P
from lgkd_core.data.download import SOURCES

try:
    EXPERIMENTS = X.resolve(config)
except X.ConfigError as err:
    raise WorkflowError(f"config.yaml: {err}") from None

DATA_ROOT = config["data_root"].rstrip("/")
DATASETS = ["synthetic", *SOURCES]
ENV = "../../envs/environment.yml"
# Rules call `python -m lgkd_core`: the interpreter running Snakemake (which has lgkd_core) comes
# first on PATH, unless --use-conda gives each job the environment of envs/.
if "conda" not in str(workflow.deployment_settings.deployment_method):
    X.put_interpreter_on_path(sys.executable)
else:
    # The conda environment has the dependencies; lgkd_core comes from this checkout.
    X.put_checkout_on_pythonpath(workflow.basedir)

RUNS = {run: exp for exp in EXPERIMENTS.values() for run in exp.runs()}
SWEEPS = [name for name, exp in EXPERIMENTS.items() if exp.is_sweep]
SETTINGS = X.resolve_settings(config)
# Runs whose step 0 is imported from a released model file (rule import_step0).
IMPORTED = [run for run, exp in RUNS.items() if exp.get("step0_checkpoint", 0)]
# Runs whose step 0 is linked from a shared step-0 run (rule share_step0).
SHARED_STEP0 = {
    exp.run(m): m.shared_step0 for exp in EXPERIMENTS.values() for m in exp.members
    if m.shared_step0
}  # fmt: skip
# Runs that train their own step 0, and runs whose step 0 is linked or imported (rule train
# produces the former's every step, rule train_incremental the latter's steps >= 1 only).
OWN_STEP0 = [run for run in RUNS if run not in SHARED_STEP0 and run not in IMPORTED]
LINKED_STEP0 = sorted({*SHARED_STEP0, *IMPORTED})


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"


wildcard_constraints:
    run=_alternatives(RUNS),
    sweep=_alternatives(SWEEPS),
    setting=_alternatives(SETTINGS),
    step=r"\d+",


for _name in config.get("default_experiments", []):
    if _name not in EXPERIMENTS:
        raise WorkflowError(
            f"config.yaml: default_experiments names {_name!r}, which is not under experiments: "
            f"({', '.join(EXPERIMENTS)})"
        )


def run_of(wildcards):
    """(experiment, member) of the {run} wildcard."""
    name, member = X.parse_run(wildcards.run)
    exp = EXPERIMENTS[name]
    return exp, exp.member(member)


def setting(wildcards, key, default=None):
    """An experiment setting; ``KEY_step0`` wins for step 0 when the wildcards have a step."""
    exp, _ = run_of(wildcards)
    step = int(wildcards.step) if "step" in wildcards.keys() else None
    value = exp.get(key, step)
    return default if value is None else value


def data_marker(dataset):
    """The file that exists once ``dataset`` is ready under data_root."""
    if dataset == "synthetic":
        return f"{DATA_ROOT}/synthetic/manifest.json"
    return f"{DATA_ROOT}/{SOURCES[dataset].root}/.done"


def quoted(args):
    return shlex.join(str(a) for a in args)


def table_of(name):
    return f"results/{name}/table.csv"


def default_targets():
    names = config.get("default_experiments", [])
    out = [table_of(n) for n in names] + [f"results/{n}/miou.png" for n in names]
    out += [f"results/{s}/compare.csv" for s in config.get("default_settings", [])]
    return out + (["results/summary.csv"] if names else [])


def html_report_args(wc):
    """The settings (with their runs) and experiments of results/report.html."""
    args = []
    for name in config.get("default_settings", []):
        setting = SETTINGS[name]
        # Joint has no run table (compare scores its step 0); it is a row of compare.csv.
        args += ["--setting", f"{name}={','.join(setting.experiments.values())}"]
    for name in config.get("default_experiments", []):
        args += ["--experiment", name]
    return quoted(args)


for _name in config.get("default_settings", []):
    if _name not in SETTINGS:
        raise WorkflowError(
            f"config.yaml: default_settings names {_name!r}, which is not under settings: "
            f"({', '.join(SETTINGS)})"
        )


# -- used by train.smk -------------------------------------------------------


def pretrained_file(exp):
    """The ImageNet weights step 0 of ``exp`` reads (``pretrained:``; iabn: rule
    download_pretrained makes it), as train inputs."""
    path = P.pretrained_input(exp.get("pretrained"), DATA_ROOT)
    return {"pretrained": path} if path else {}


def _pretrained_md5(exp, step):
    """``--pretrained-md5`` for step 0 when downloads.pretrained.md5 replaces the published one."""
    md5 = (config.get("downloads", {}).get("pretrained") or {}).get("md5")
    path = pretrained_file(exp).get("pretrained") if step == 0 else None
    return ["--pretrained-md5", md5] if md5 and path and P.is_iabn_file(path) else []


def train_inputs(wc):
    exp, member = run_of(wc)
    step = int(wc.step)
    if step >= exp.num_steps():
        raise WorkflowError(f"{wc.run}: no step {step} (the task has {exp.num_steps()} steps)")
    inputs = {"data": data_marker(exp.dataset), "splits": str(X.splits_dir(exp, member))}
    inputs.update(pretrained_file(exp) if step == 0 else {})
    if step > 0:
        inputs["teacher"] = f"results/{wc.run}/step{step - 1}/model.pt"
    return inputs


def train_args(wc):
    """Everything that defines the step's result: a change re-runs the step (params trigger)."""
    exp, member = run_of(wc)
    step, run_dir = int(wc.step), Path("results", wc.run)
    state = run_dir / f"step{step}" / "state"
    command, *args = X.train_args(exp, member, step, Path(DATA_ROOT), run_dir, state)
    assert command == "train"  # the rule's shell names the command
    return quoted(args + _pretrained_md5(exp, step))


def processes_per_node(wc):
    """Training processes per node: one per GPU, or ``processes`` on CPU."""
    return setting(wc, "gpus", 0) or setting(wc, "processes", 1)


def _gpus(wc):
    return setting(wc, "gpus", 0)


def _cpus(wc):
    return setting(wc, "cpus", 1)


def _nodes(wc):
    return setting(wc, "nodes", 1)


def import_inputs(wc):
    """A local released model is an input, so a project model.pt is built first."""
    source = setting(wc, "step0_checkpoint")
    return {} if X.is_url(source) else {"step0": source}


def import_args(wc):
    exp, member = run_of(wc)
    return quoted(
        X.import_args(exp, member, Path("results", wc.run), setting(wc, "step0_checkpoint"))
    )


# -- used by report.smk ------------------------------------------------------


def _models(wc):
    exp, _ = run_of(wc)
    return [f"results/{wc.run}/step{s}/model.pt" for s in range(exp.num_steps())]


def _metrics(wc):
    exp, _ = run_of(wc)
    return [f"results/{wc.run}/step{s}/metrics.json" for s in range(exp.num_steps())]


def _predictions(wc):
    exp, _ = run_of(wc)
    return [f"results/{wc.run}/step{s}/predictions.npz" for s in range(exp.num_steps())]


def _members(wc):
    exp = EXPERIMENTS[wc.sweep]
    return {m.name: f"results/{exp.run(m)}/table.csv" for m in exp.members}


def _shared_step0(wc):
    """The shared step-0 run's model.pt, metrics.json or predictions.npz, linked into step0/."""
    return f"results/{SHARED_STEP0[wc.run]}/step0/{wc.file}"


# -- used by compare (report.smk) --------------------------------------------


def _compare_inputs(wc):
    setting = SETTINGS[wc.setting]
    out = {m: table_of(name) for m, name in setting.experiments.items()}
    if setting.joint:
        out["Joint"] = f"results/{setting.joint}/step0/metrics.json"
    return out


def compare_args(wc, input):
    setting = SETTINGS[wc.setting]
    args = ["--dataset", setting.dataset, "--task", setting.task]
    for method, name in setting.experiments.items():
        args += ["--method", f"{method}={name}={input[method]}"]
    if setting.joint:
        args += ["--joint", f"{setting.joint}={input['Joint']}"]
    return quoted(args)
