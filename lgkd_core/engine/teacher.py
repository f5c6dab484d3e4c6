"""Loading step models from files: the frozen teacher and the student's starting weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lgkd_core.engine.checkpoint import CheckpointError, load_model_file
from lgkd_core.models import build_model
from lgkd_core.tasks import Task

# Structural keys a model file may pin; the norm implementation is the running job's choice
# (the state_dict keys are the same for every norm kind).
STRUCTURE_KEYS = ("backbone", "output_stride", "head_channels")


def check_layout(payload: dict, path: Path, task: Task, step: int) -> None:
    """Raise if the file's classes do not match ``task`` at ``step``.

    Files written by this project carry the class order; other formats are checked on the
    classifier shapes alone.
    """
    expected = task.classes_per_step(step)
    if "order" in payload:
        if payload.get("dataset") != task.dataset or list(payload["order"]) != task.order(step):
            raise CheckpointError(
                f"{path} was trained for {payload.get('dataset')}/{payload.get('task')} step "
                f"{payload.get('step')} (classes {payload['order']}), but "
                f"{task.dataset}/{task.name} step {step} needs classes {task.order(step)}"
            )
    state = payload["model_state"]
    found = []
    while f"cls.{len(found)}.weight" in state:
        found.append(int(state[f"cls.{len(found)}.weight"].shape[0]))
    if found != expected:
        raise CheckpointError(
            f"{path} has classifiers with {found} classes per step, but "
            f"{task.dataset}/{task.name} step {step} needs {expected}"
        )


def load_weights(model: nn.Module, state: dict, path: Path, allow_missing_prefix: str = "") -> None:
    """Load ``state`` into ``model``; only keys under ``allow_missing_prefix`` may be missing."""
    current = model.state_dict()
    shape_errors = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(current[k].shape)}"
        for k, v in state.items()
        if k in current and current[k].shape != v.shape
    ]
    missing = [
        k
        for k in current
        if k not in state and not (allow_missing_prefix and k.startswith(allow_missing_prefix))
    ]
    unexpected = [k for k in state if k not in current]
    if shape_errors or missing or unexpected:
        lines = shape_errors[:5] + [f"missing: {k}" for k in missing[:5]]
        lines += [f"unexpected: {k}" for k in unexpected[:5]]
        raise CheckpointError(
            f"{path} does not fit the model architecture "
            f"({len(shape_errors)} shape mismatches, {len(missing)} missing, "
            f"{len(unexpected)} unexpected keys); check backbone/output_stride/head_channels. "
            + "; ".join(lines)
        )
    model.load_state_dict(state, strict=False)


def build_from_file(
    path: Path, task: Task, step: int, arch: dict, device: torch.device
) -> tuple[nn.Module, dict]:
    """The step-``step`` model stored in ``path``, checked against the task, on ``device``."""
    payload = load_model_file(path)
    check_layout(payload, path, task, step)
    arch = {**arch, **{k: payload[k] for k in STRUCTURE_KEYS if k in payload}}
    model = build_model(classes_per_step=task.classes_per_step(step), **arch)
    load_weights(model, payload["model_state"], path)
    return model.to(device), payload


def frozen_teacher(
    path: Path, task: Task, step: int, arch: dict, device: torch.device
) -> nn.Module:
    """The step ``step - 1`` model from ``path``: eval mode, no gradients.

    ``teacher.step0_init``: how the chain's step 0 started (the file's ``init``; ``unknown`` for
    files that do not record it).
    """
    teacher, payload = build_from_file(path, task, step - 1, arch, device)
    teacher.step0_init = payload.get("init") or "unknown"
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
