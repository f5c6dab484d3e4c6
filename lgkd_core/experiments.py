"""Experiments of the workflow's ``config.yaml``, resolved into runs and command lines.

The Snakefile validates the configuration against ``workflow/schemas/config.schema.yaml`` (types,
allowed keys and values); this module adds what a schema cannot say (a task valid for its
dataset, method setting names, sweep members) and turns one (experiment, member, step) into the
argument lists of ``python -m lgkd_core train/evaluate``. It does not import Snakemake.

A *run* is one chain of steps, stored under ``results/<run>/``: ``EXP`` for a plain experiment,
``EXP/members/<task>-seed<seed>`` for each member of a sweep (``orders:`` and/or ``seeds:``).

A *setting* (``settings:`` in config.yaml) is one incremental setting with a list of methods: it
expands into one experiment per method (the ``main`` method, LGKD by default, is named after the
setting, every other one ``<setting>_<method slug>``, e.g. ``voc_15-1_plop``), and names the
dataset's Joint experiment (task ``offline``) that gives the setting its upper bound.

Step 0 is plain cross-entropy for every method, so runs whose step 0 would be trained the same
way (same dataset, class order, seed and every setting that reaches step 0's training command)
share one: it is trained once under the run ``step0-<dataset>-<order>-seed<seed>-<digest>``
and linked into each run's ``step0/`` (:func:`shared_step0_run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lgkd_core.methods import get_method, method_names
from lgkd_core.tasks import Task, get_task, list_datasets

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
RUN_PATTERN = rf"{NAME_PATTERN}(?:/members/{NAME_PATTERN})?"
_STEP0_SUFFIX = "_step0"
SHARED_STEP0_PREFIX = "step0-"
# Methods whose step >= 1 penalty needs importance statistics gathered while step 0 trained.
REGULARIZER_METHODS = ("EWC", "PI", "RW")
_SETTING_KEYS = ("dataset", "task", "methods", "main", "joint", "per_method")


class ConfigError(ValueError):
    """The workflow configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class Member:
    """One chain of steps: a class order (task variant) and a seed."""

    task: str
    seed: int
    name: str | None = None  # None for a plain (non-sweep) experiment
    shared_step0: str | None = None  # the run that trains this member's step 0, if shared


@dataclass
class Experiment:
    name: str
    dataset: str
    task: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    is_shared_step0: bool = False  # a generated run that only trains a shared step 0

    @property
    def is_sweep(self) -> bool:
        return self.members[0].name is not None

    def run(self, member: Member) -> str:
        return self.name if member.name is None else f"{self.name}/members/{member.name}"

    def runs(self) -> list[str]:
        return [self.run(m) for m in self.members]

    def member(self, name: str | None) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"experiment {self.name!r} has no member {name!r}")

    def num_steps(self) -> int:
        return get_task(self.dataset, self.task).num_steps

    def get(self, key: str, step: int | None = None) -> Any:
        """A setting; ``key_step0`` wins at step 0 when it is set."""
        if step == 0 and self.settings.get(key + _STEP0_SUFFIX) is not None:
            return self.settings[key + _STEP0_SUFFIX]
        return self.settings.get(key)


def _task(dataset: str, name: str, where: str) -> Task:
    try:
        return get_task(dataset, name)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _experiment(name: str, raw: Mapping[str, Any], defaults: Mapping[str, Any]) -> Experiment:
    where = f"experiments.{name}"
    if not re.fullmatch(NAME_PATTERN, str(name)) or ".." in str(name):
        raise ConfigError(
            f"{where}: experiment names may use letters, digits, '_', '-' and '.' only "
            "(they become folders under results/)"
        )
    if str(name).startswith(SHARED_STEP0_PREFIX):
        raise ConfigError(
            f"{where}: names starting with {SHARED_STEP0_PREFIX!r} are kept for the shared "
            "step-0 runs the workflow makes; rename the experiment"
        )
    dataset = raw.get("dataset")
    if dataset not in list_datasets():
        raise ConfigError(
            f"{where}.dataset: {dataset!r} is not a dataset; valid: {', '.join(list_datasets())}"
        )
    task = _task(dataset, raw.get("task"), f"{where}.task")
    settings = {**(defaults.get(dataset) or {}), **raw}
    for key in ("dataset", "task", "method", "orders", "seeds"):
        settings.pop(key, None)
    try:
        method = get_method(raw.get("method"), dataset, task.name, settings.get("loss") or {})
    except ValueError as err:
        key = "loss" if "setting" in str(err) else "method"
        raise ConfigError(f"{where}.{key}: {err}") from None
    if method.name == "Joint" and task.name != "offline":
        raise ConfigError(
            f"{where}.task: method Joint is the offline upper bound and trains task 'offline' "
            f"(all classes at once), not {task.name!r}; use method FT for fine-tuning"
        )
    step0 = settings.get("step0_checkpoint")
    if method.name in REGULARIZER_METHODS and (step0 or not settings.get("step0_importance")):
        raise ConfigError(
            f"{where}: method {method.name} penalises changes by importance statistics that step "
            "0 gathers while it trains; set step0_importance: true and do not use "
            "step0_checkpoint (released step-0 models do not carry them)"
        )
    orders = raw.get("orders") or [task.name]
    for order in orders:
        other = _task(dataset, order, f"{where}.orders")
        if other.num_steps != task.num_steps:
            raise ConfigError(
                f"{where}.orders: {order!r} has {other.num_steps} steps but {task.name!r} "
                f"has {task.num_steps}; the orders of a sweep must be variants of one setting"
            )
    seeds = raw.get("seeds") or [settings.get("seed", 42)]
    sweep = "orders" in raw or "seeds" in raw
    members = [
        Member(order, int(seed), f"{order}-seed{seed}" if sweep else None)
        for order in orders
        for seed in seeds
    ]
    if step0 and sweep and len(orders) > 1:
        raise ConfigError(
            f"{where}.step0_checkpoint: one step-0 model cannot serve several class orders"
        )
    return Experiment(name, dataset, task.name, method.name, settings, members)


@dataclass(frozen=True)
class Setting:
    """A setting of ``settings:``: its experiment per method and its Joint experiment."""

    name: str
    dataset: str
    task: str
    experiments: dict[str, str]  # method -> experiment name
    joint: str | None = None


def method_slug(method: str) -> str:
    """``MiB+LGKD`` -> ``mib-lgkd``: the suffix of a setting's experiment for ``method``."""
    return re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")


def _canonical_method(name: Any, where: str) -> str:
    for valid in method_names():
        if str(name).lower() == valid.lower():
            return valid
    raise ConfigError(f"{where}: unknown method {name!r}; valid: {', '.join(method_names())}")


def _expand_setting(name: str, raw: Mapping[str, Any]) -> tuple[Setting, dict[str, dict]]:
    where = f"settings.{name}"
    if not re.fullmatch(NAME_PATTERN, str(name)):
        raise ConfigError(f"{where}: setting names may use letters, digits, '_', '-' and '.' only")
    methods = [_canonical_method(m, f"{where}.methods") for m in raw.get("methods") or []]
    if not methods:
        raise ConfigError(f"{where}.methods: list at least one method")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"{where}.methods: a method is listed twice")
    if "Joint" in methods:
        raise ConfigError(
            f"{where}.methods: Joint trains task 'offline'; define it once per dataset under "
            f"experiments: and name it with {where}.joint"
        )
    main = _canonical_method(raw.get("main", "LGKD" if "LGKD" in methods else methods[0]),
                             f"{where}.main")  # fmt: skip
    if main not in methods:
        raise ConfigError(f"{where}.main: {main} is not one of {where}.methods")
    per_method = raw.get("per_method") or {}
    for key in per_method:
        if _canonical_method(key, f"{where}.per_method") not in methods:
            raise ConfigError(f"{where}.per_method.{key}: not one of {where}.methods")
    shared = {k: v for k, v in raw.items() if k not in _SETTING_KEYS}
    names, generated = {}, {}
    for method in methods:
        exp_name = name if method == main else f"{name}_{method_slug(method)}"
        extra = next((v for k, v in per_method.items() if _canonical_method(k, "") == method), {})
        generated[exp_name] = {
            "dataset": raw.get("dataset"),
            "task": raw.get("task"),
            "method": method,
            **shared,
            **(extra or {}),
        }
        names[method] = exp_name
    setting = Setting(name, raw.get("dataset"), str(raw.get("task")), names, raw.get("joint"))
    return setting, generated


def _all_raw(config: Mapping[str, Any]) -> tuple[dict[str, dict], dict[str, Setting]]:
    raw = dict(config.get("experiments") or {})
    settings: dict[str, Setting] = {}
    for name, spec in (config.get("settings") or {}).items():
        setting, generated = _expand_setting(name, spec)
        for exp_name in generated:
            if exp_name in raw:
                raise ConfigError(
                    f"settings.{name} makes the experiment {exp_name!r}, which is also defined "
                    "under experiments:; rename one of them"
                )
        raw.update(generated)
        settings[name] = setting
    return raw, settings


def resolve(config: Mapping[str, Any]) -> dict[str, Experiment]:
    """All experiments of ``config`` (those of ``settings:`` included) with the dataset defaults
    merged in, plus the shared step-0 runs (``Experiment.is_shared_step0``).

    Raises ConfigError naming the key (``experiments.NAME.KEY``) and the valid values.
    """
    defaults = config.get("dataset_defaults", {}) or {}
    raw_all, settings = _all_raw(config)
    out = {name: _experiment(name, raw, defaults) for name, raw in raw_all.items()}
    for setting in settings.values():
        joint = setting.joint
        if joint is None:
            continue
        if joint not in out or out[joint].method != "Joint":
            raise ConfigError(
                f"settings.{setting.name}.joint: {joint!r} is not an experiment with method "
                "Joint (define one under experiments:, task offline)"
            )
        if out[joint].dataset != setting.dataset:
            raise ConfigError(
                f"settings.{setting.name}.joint: {joint!r} is a {out[joint].dataset} experiment, "
                f"the setting is on {setting.dataset}"
            )
    _share_step0(out)
    return out


def resolve_settings(config: Mapping[str, Any]) -> dict[str, Setting]:
    """The settings of ``config`` (validated the same way as :func:`resolve`)."""
    return _all_raw(config)[1]


# Flags of the step-0 command that do not change what step 0 learns (paths, loader workers,
# the method and its settings: step 0 is plain cross-entropy for every method).
_NOT_STEP0_RECIPE = ("--method", "--out", "--splits", "--state-dir", "--workers", "--set")


def step0_recipe(exp: Experiment, member: Member) -> list[str]:
    """What decides a run's step-0 model: its step-0 training command without paths and method,
    and the processes it runs on."""
    args = train_args(exp, member, 0, Path("D"), Path("R"), Path("S"))
    kept, i = [], 0
    while i < len(args):
        if args[i] in _NOT_STEP0_RECIPE:
            i += 2
            continue
        if args[i] == "--tensorboard":  # logging only
            i += 1
            continue
        kept.append(args[i])
        i += 1
    g = exp.get
    procs = g("gpus") or g("processes") or 1
    return [*kept, f"processes={procs}", f"nodes={g('nodes') or 1}"]


def shared_step0_run(exp: Experiment, member: Member) -> str:
    """Name of the run that trains ``member``'s step 0 for every run with the same recipe."""
    digest = hashlib.sha256(json.dumps(step0_recipe(exp, member)).encode()).hexdigest()[:8]
    return f"{SHARED_STEP0_PREFIX}{exp.dataset}-{member.task}-seed{member.seed}-{digest}"


def _share_step0(experiments: dict[str, Experiment]) -> None:
    """Give every run without a ``step0_checkpoint`` its shared step-0 run (added, in place)."""
    shared: dict[str, Experiment] = {}
    for exp in list(experiments.values()):
        if exp.get("step0_checkpoint"):
            continue
        members = []
        for member in exp.members:
            run = shared_step0_run(exp, member)
            if run not in shared:
                settings = {k: v for k, v in exp.settings.items() if k != "loss"}
                shared[run] = Experiment(
                    run, exp.dataset, member.task, "FT", settings,
                    [Member(member.task, member.seed)], is_shared_step0=True,
                )  # fmt: skip
            members.append(dataclasses.replace(member, shared_step0=run))
        exp.members = members
    experiments.update(shared)


def parse_run(run: str) -> tuple[str, str | None]:
    """``EXP`` -> (EXP, None); ``EXP/members/M`` -> (EXP, M)."""
    if not re.fullmatch(RUN_PATTERN, run):
        raise ConfigError(f"{run!r} is not a run name (EXP or EXP/members/MEMBER)")
    name, _, member = run.partition("/members/")
    return name, member or None


def put_interpreter_on_path(executable: str) -> None:
    """Put ``executable``'s folder first on PATH so the rules' ``python`` is the one running
    Snakemake (the one with lgkd_core installed), also when the venv is not activated.
    """
    folder = os.path.dirname(os.path.abspath(executable))
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if parts[:1] != [folder]:
        os.environ["PATH"] = os.pathsep.join([folder, *parts])


def put_checkout_on_pythonpath(checkout: str) -> None:
    """Prepend the repository ``checkout`` to PYTHONPATH, so that jobs running in an environment
    that has the dependencies but not lgkd_core (``--use-conda``) import it from there."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parts[:1] != [checkout]:
        os.environ["PYTHONPATH"] = os.pathsep.join([checkout, *parts])


def is_url(value: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", str(value)))


# The per-step image lists, one folder per dataset, task (class order) and overlap mode, shared by
# every run that needs them (rule prepare_splits).
SPLITS_DIR = Path("results", "_splits")


def splits_dir(exp: Experiment, member: Member) -> Path:
    """The folder of ``member``'s step{s}-{train,val}.txt lists."""
    mode = "overlap" if exp.get("overlap") is not False else "disjoint"
    return SPLITS_DIR / exp.dataset / f"{member.task}-{mode}"


def _flag(name: str, value: Any) -> list[str]:
    return [f"--{name}", str(value)]


def train_args(
    exp: Experiment, member: Member, step: int, data_root: Path, run_dir: Path, state_dir: Path
) -> list[str]:
    """Arguments of ``python -m lgkd_core train`` for one step (no shell quoting applied)."""
    g = exp.get
    args = ["train", "--dataset", exp.dataset, "--task", member.task, "--step", str(step)]
    args += ["--method", exp.method, "--data-root", str(data_root)]
    args += ["--out", str(run_dir / f"step{step}"), "--splits", str(splits_dir(exp, member))]
    args += ["--state-dir", str(state_dir), "--seed", str(member.seed)]
    if step > 0:
        args += ["--teacher", str(run_dir / f"step{step - 1}" / "model.pt")]
    else:  # step 0 says how its backbone starts; unset is refused (lgkd_core.data.pretrained)
        from lgkd_core.data.pretrained import pretrained_flags

        where = f"experiments.{exp.name}.pretrained"
        args += pretrained_flags(g("pretrained"), where, exp.dataset, g("backbone"))
    for key in ("epochs", "batch_size", "lr", "crop_size"):
        if g(key, step) is not None:
            args += _flag(key.replace("_", "-"), g(key, step))
    for key in ("backbone", "head_channels", "norm", "output_stride", "amp", "workers"):
        if g(key) is not None:
            args += _flag(key.replace("_", "-"), g(key))
    if g("checkpoint_every"):
        args += _flag("checkpoint-every", g("checkpoint_every"))
    if step == 0 and g("step0_importance"):
        args.append("--importance")
    args.append("--overlap" if g("overlap") is not False else "--disjoint")
    if g("channels_last"):
        args.append("--channels-last")
    if g("tensorboard"):
        args.append("--tensorboard")
    if g("compile"):
        args.append("--compile")
    args += ["--device", "cuda" if (g("gpus") or 0) > 0 else "cpu"]
    for key, value in sorted((g("loss") or {}).items()):
        args += ["--set", f"{key}={value}"]
    return args


def import_args(exp: Experiment, member: Member, run_dir: Path, source: str) -> list[str]:
    """Arguments of ``python -m lgkd_core import-step0`` for a released step-0 model."""
    args = ["--source", str(source), "--dataset", exp.dataset]
    args += ["--task", member.task, "--out", str(run_dir / "step0" / "model.pt")]
    for key in ("backbone", "head_channels", "output_stride"):
        if exp.get(key) is not None:
            args += _flag(key.replace("_", "-"), exp.get(key))
    return args


def evaluate_args(
    exp: Experiment, member: Member, step: int, data_root: Path, run_dir: Path
) -> list[str]:
    """Arguments of ``python -m lgkd_core evaluate`` for one step."""
    args = ["evaluate", "--dataset", exp.dataset, "--task", member.task, "--step", str(step)]
    args += ["--data-root", str(data_root), "--splits", str(splits_dir(exp, member))]
    args += ["--model", str(run_dir / f"step{step}" / "model.pt")]
    args += ["--out", str(run_dir / f"step{step}" / "metrics.json")]
    args += ["--predictions", str(run_dir / f"step{step}" / "predictions.npz")]
    args += _flag("crop-size", exp.get("crop_size_val") or exp.get("crop_size") or 0)
    args += _flag("batch-size", exp.get("eval_batch_size") or 8)
    args += _flag("workers", exp.get("workers") if exp.get("workers") is not None else 2)
    args += ["--device", "cuda" if (exp.get("gpus") or 0) > 0 else "cpu"]
    return args
