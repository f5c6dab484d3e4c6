"""Experiments of the workflow's ``config.yaml``, resolved into runs and command lines.

The Snakefile validates the configuration against ``workflow/schemas/config.schema.yaml`` (types,
allowed keys and values); this module adds what a schema cannot say (a task valid for its
dataset, method setting names, sweep members) and turns one (experiment, member, step) into the
argument lists of ``python -m lgkd_core train/evaluate``. It does not import Snakemake.

A *run* is one chain of steps, stored under ``results/<run>/``: ``EXP`` for a plain experiment,
``EXP/members/<task>-seed<seed>`` for each member of a sweep (``orders:`` and/or ``seeds:``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lgkd_core.methods import get_method
from lgkd_core.tasks import Task, get_task, list_datasets

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
RUN_PATTERN = rf"{NAME_PATTERN}(?:/members/{NAME_PATTERN})?"
_STEP0_SUFFIX = "_step0"


class ConfigError(ValueError):
    """The workflow configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class Member:
    """One chain of steps: a class order (task variant) and a seed."""

    task: str
    seed: int
    name: str | None = None  # None for a plain (non-sweep) experiment


@dataclass
class Experiment:
    name: str
    dataset: str
    task: str
    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)

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


def resolve(config: Mapping[str, Any]) -> dict[str, Experiment]:
    """All experiments of ``config`` with the dataset defaults merged in.

    Raises ConfigError naming the key (``experiments.NAME.KEY``) and the valid values.
    """
    defaults = config.get("dataset_defaults", {}) or {}
    out: dict[str, Experiment] = {}
    for name, raw in (config.get("experiments") or {}).items():
        where = f"experiments.{name}"
        if not re.fullmatch(NAME_PATTERN, str(name)) or ".." in str(name):
            raise ConfigError(
                f"{where}: experiment names may use letters, digits, '_', '-' and '.' only "
                "(they become folders under results/)"
            )
        dataset = raw.get("dataset")
        if dataset not in list_datasets():
            raise ConfigError(
                f"{where}.dataset: {dataset!r} is not a dataset; "
                f"valid: {', '.join(list_datasets())}"
            )
        task = _task(dataset, raw.get("task"), f"{where}.task")
        settings = {**(defaults.get(dataset) or {}), **raw}
        for key in ("dataset", "task", "method", "orders", "seeds"):
            settings.pop(key, None)
        try:
            get_method(raw.get("method"), dataset, task.name, settings.get("loss") or {})
        except ValueError as err:
            key = "loss" if "setting" in str(err) else "method"
            raise ConfigError(f"{where}.{key}: {err}") from None
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
        step0 = settings.get("step0_checkpoint")
        if step0 and sweep and len(orders) > 1:
            raise ConfigError(
                f"{where}.step0_checkpoint: one step-0 model cannot serve several class orders"
            )
        out[name] = Experiment(name, dataset, task.name, raw["method"], settings, members)
    return out


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


def is_url(value: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", str(value)))


def _flag(name: str, value: Any) -> list[str]:
    return [f"--{name}", str(value)]


def train_args(
    exp: Experiment, member: Member, step: int, data_root: Path, run_dir: Path, state_dir: Path
) -> list[str]:
    """Arguments of ``python -m lgkd_core train`` for one step (no shell quoting applied)."""
    g = exp.get
    args = ["train", "--dataset", exp.dataset, "--task", member.task, "--step", str(step)]
    args += ["--method", exp.method, "--data-root", str(data_root)]
    args += ["--out", str(run_dir / f"step{step}"), "--splits", str(run_dir / "splits")]
    args += ["--state-dir", str(state_dir), "--seed", str(member.seed)]
    if step > 0:
        args += ["--teacher", str(run_dir / f"step{step - 1}" / "model.pt")]
    elif g("pretrained"):
        args += ["--pretrained", str(g("pretrained"))]
    for key in ("epochs", "batch_size", "lr", "crop_size"):
        if g(key, step) is not None:
            args += _flag(key.replace("_", "-"), g(key, step))
    for key in ("backbone", "head_channels", "norm", "output_stride", "amp", "workers"):
        if g(key) is not None:
            args += _flag(key.replace("_", "-"), g(key))
    if g("checkpoint_every"):
        args += _flag("checkpoint-every", g("checkpoint_every"))
    args.append("--overlap" if g("overlap") is not False else "--disjoint")
    if g("channels_last"):
        args.append("--channels-last")
    if g("compile"):
        args.append("--compile")
    args += ["--device", "cuda" if (g("gpus") or 0) > 0 else "cpu"]
    for key, value in sorted((g("loss") or {}).items()):
        args += ["--set", f"{key}={value}"]
    return args


def import_args(exp: Experiment, member: Member, run_dir: Path, source: str) -> list[str]:
    """Arguments of ``python -m lgkd_core import-step0`` for a released step-0 model."""
    args = ["import-step0", "--source", str(source), "--dataset", exp.dataset]
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
    args += ["--data-root", str(data_root), "--splits", str(run_dir / "splits")]
    args += ["--model", str(run_dir / f"step{step}" / "model.pt")]
    args += ["--out", str(run_dir / f"step{step}" / "metrics.json")]
    args += _flag("crop-size", exp.get("crop_size_val") or exp.get("crop_size") or 0)
    args += _flag("batch-size", exp.get("eval_batch_size") or 8)
    args += _flag("workers", exp.get("workers") if exp.get("workers") is not None else 2)
    args += ["--device", "cuda" if (exp.get("gpus") or 0) > 0 else "cpu"]
    return args
