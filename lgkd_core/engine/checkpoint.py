"""Atomic files, the step model file (``model.pt``) and the epoch checkpoints under ``state/``.

Every load goes through ``torch.load(..., weights_only=True)``: a file can hold tensors and plain
containers (and numpy numbers, which the reference's checkpoints hold), never code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lgkd_core.io import atomic_write_bytes

log = logging.getLogger(__name__)

MODEL_FORMAT = "lgkd-model/1"
STATE_FORMAT = "lgkd-state/1"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, or does not fit the task."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write_bytes(path, lambda fh: torch.save(obj, fh))


def config_digest(config: Mapping[str, Any]) -> str:
    """Stable short digest of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _numpy_scalar_globals() -> list:
    """What ``weights_only`` loading needs to read plain numpy numbers (no code, no arrays).

    The reference's ``save_ckpt`` stores ``best_score``, a numpy float64 (its metrics are numpy),
    so the authors' released step-0 files hold one, pickled under numpy 1.x's name
    ``numpy.core.multiarray.scalar`` (numpy 2 writes ``numpy._core.multiarray.scalar``).
    """
    scalar = np.float64(0).__reduce__()[0]
    dtypes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefdg"}
    names = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    return [*((scalar, name) for name in names), np.dtype, *dtypes]


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` restricted to tensors, plain containers and numpy numbers; clear errors
    for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # torch < 2.5 has no safe_globals: there, files holding numpy numbers are refused.
    allow = getattr(torch.serialization, "safe_globals", None)
    try:
        with allow(_numpy_scalar_globals()) if allow else contextlib.nullcontext():
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects other than tensors and "
                f"plain containers (loading it could run code). Re-save it as a plain state_dict. "
                f"({msg})"
            ) from exc
        raise CheckpointError(f"cannot read checkpoint {path}: {msg}") from exc


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict:
    """Drop a DataParallel/DDP ``module.`` prefix from every key that has it."""
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def save_model_file(path: Path, model_state: Mapping[str, torch.Tensor], meta: dict) -> None:
    """Write a step's final model: weights, class layout, task, step, method, config digest."""
    payload = {"format": MODEL_FORMAT, **meta, "model_state": dict(model_state)}
    atomic_torch_save(payload, path)


def load_model_file(path: Path) -> dict:
    """Read a ``model.pt``, or a reference-format checkpoint (``model_state`` with ``module.``).

    Returns a dict with at least ``model_state`` (keys without ``module.``); metadata keys are
    present for files written by this project.
    """
    payload = safe_load(path)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dictionary")
    if payload.get("format") == MODEL_FORMAT:
        return payload
    for key in ("model_state", "state_dict", "model"):
        if key in payload and isinstance(payload[key], Mapping):
            return {"format": "reference", "model_state": strip_prefix(payload[key])}
    if all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"format": "state_dict", "model_state": strip_prefix(payload)}
    raise CheckpointError(
        f"{path} is neither an lgkd model file nor a reference checkpoint "
        f"(top-level keys: {sorted(payload)[:8]})"
    )


class StateStore:
    """Epoch/iteration checkpoints of one training job, newest last; keeps ``keep`` files."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("ckpt-*.pt"))

    def path(self, global_iter: int) -> Path:
        """Where the checkpoint after ``global_iter`` iterations is written."""
        return self.directory / f"ckpt-{global_iter:09d}.pt"

    def save(self, global_iter: int, state: dict) -> Path:
        path = self.path(global_iter)
        atomic_torch_save({"format": STATE_FORMAT, **state}, path)
        for old in self._files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def latest(self, digest: str | None = None) -> tuple[Path, dict] | None:
        """The newest readable checkpoint (of the run identified by ``digest``, when given).

        Corrupt ones are reported and skipped. Those of another configuration are moved to
        ``other-config/``: left in place they would outrank (and get this run's newer
        checkpoints pruned) whenever their iteration numbers are higher.
        """
        for path in reversed(self._files()):
            try:
                state = safe_load(path)
                if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
                    raise CheckpointError(f"{path} is not an lgkd training state")
            except CheckpointError as exc:
                log.warning("skipping unusable checkpoint %s: %s", path, exc)
                continue
            if digest is not None and state.get("digest") != digest:
                aside = self.directory / "other-config" / path.name
                aside.parent.mkdir(exist_ok=True)
                os.replace(path, aside)
                log.warning(
                    "ignoring %s: it was written with a different configuration (moved to %s)",
                    path,
                    aside,
                )
                continue
            return path, state
        return None

    def clear(self) -> None:
        """The step is done: remove its checkpoints.

        Those set aside in ``other-config/`` stay: they are another configuration's progress,
        which only the user can decide to discard.
        """
        for path in self._files():
            path.unlink(missing_ok=True)
