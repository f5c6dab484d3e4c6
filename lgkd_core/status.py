"""``python -m lgkd_core status``: where every run and step stands, read from the files alone.

One line per run and step, from ``results/<run>/step<s>/`` (model.pt, metrics.json, state/) and
``logs/<run>/step<s>/train.log``: the state, the epoch and iteration reached, images/s, the
estimated time left, the last loss, and the final mIoU of evaluated steps. It reads no process
table and talks to no scheduler, so it works the same on a laptop and on a cluster's login node
(any machine that sees the shared results folder).

States: ``done`` (evaluated), ``trained`` (model written, not evaluated yet), ``running`` (the
training log changed within ``--stale`` seconds), ``stopped`` (an unfinished step whose log is
older: killed, preempted or waiting for its retry; its checkpoint is where it resumes),
``linked`` (a step 0 shared from another run, shown with that run's scores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_STEP_DIR = re.compile(r"^step(\d+)$")
_EPOCHS = re.compile(r"--epochs (\d+)")
_PER_EPOCH = re.compile(r"(\d+) iterations per epoch")
_CHECKPOINT = re.compile(r"checkpoint \S+ \(epoch (\d+), batch (\d+)\)")
_ITERATION = re.compile(r"\bit (\d+)/(\d+) (.*)$")
_DONE = re.compile(r"step \d+ done: (\d+) iterations, ([\d.]+) images/s")


@dataclass
class StepStatus:
    """What the files say about one step of one run."""

    run: str
    step: int
    state: str
    epoch: int | None = None
    epochs: int | None = None
    iteration: int | None = None
    iterations: int | None = None
    images_per_second: float | None = None
    eta: str | None = None
    loss: float | None = None
    miou: dict[str, float | None] | None = None
    log_age_s: float | None = None
    linked_to: str | None = None

    def line(self, width: int = 40) -> str:
        parts = [f"{self.run:<{width}} step{self.step:<3} {self.state:<8}"]
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}/{self.epochs if self.epochs else '?'}")
        if self.iteration is not None:
            parts.append(f"it {self.iteration}/{self.iterations or '?'}")
        if self.images_per_second is not None:
            parts.append(f"{self.images_per_second:.1f} img/s")
        if self.eta and self.state == "running":
            parts.append(f"eta {self.eta}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.miou:
            parts.append(
                "mIoU "
                + " ".join(
                    f"{k} {100 * v:.2f}" if v is not None else f"{k} -"
                    for k, v in self.miou.items()
                )
            )
        if self.linked_to:
            parts.append(f"(from {self.linked_to})")
        if self.log_age_s is not None and self.state in ("running", "stopped"):
            parts.append(f"(log {self.log_age_s:.0f} s ago)")
        return "  ".join(parts)


def _read_log(path: Path) -> dict:
    """The progress facts of one training log (the newest value of each)."""
    facts: dict = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return facts
    for line in text.splitlines():
        if (m := _EPOCHS.search(line)) and "epochs" not in facts:
            facts["epochs"] = int(m.group(1))
        if m := _PER_EPOCH.search(line):
            facts["per_epoch"] = int(m.group(1))
        if m := _CHECKPOINT.search(line):
            facts["epoch"] = int(m.group(1))
        if m := _ITERATION.search(line):
            facts["iteration"], facts["iterations"] = int(m.group(1)), int(m.group(2))
            values = dict(kv.split("=", 1) for kv in m.group(3).split() if "=" in kv)
            if "total" in values:
                facts["loss"] = float(values["total"])
            if "img/s" in values:
                facts["images_per_second"] = float(values["img/s"])
            facts["eta"] = values.get("eta")
        if m := _DONE.search(line):
            facts["iteration"] = facts["iterations"] = int(m.group(1))
            facts["images_per_second"] = float(m.group(2))
    return facts


def _newest_checkpoint_iteration(state_dir: Path) -> int | None:
    names = sorted(p.name for p in state_dir.glob("ckpt-*.pt")) if state_dir.is_dir() else []
    if not names:
        return None
    return int(names[-1].removeprefix("ckpt-").removesuffix(".pt"))


def step_status(
    results: Path, logs: Path, run: str, step: int, stale_s: float = 120.0
) -> StepStatus:
    """The :class:`StepStatus` of ``results/<run>/step<step>`` (and its logs)."""
    step_dir = results / run / f"step{step}"
    model, metrics = step_dir / "model.pt", step_dir / "metrics.json"
    status = StepStatus(run, step, "pending")
    if model.is_symlink():
        status.linked_to = Path(os.path.realpath(model)).parent.parent.name
    if metrics.is_file():
        summary = json.loads(metrics.read_text()).get("summary", {})
        status.miou = {k: summary.get(k) for k in ("old", "new", "all")}
    log_path = logs / (status.linked_to or run) / f"step{step}" / "train.log"
    facts = _read_log(log_path)
    for key in ("epochs", "epoch", "iteration", "iterations", "images_per_second", "eta", "loss"):
        if key in facts:
            setattr(status, key, facts[key])
    if model.exists():
        status.state = "done" if status.miou is not None else "trained"
        if status.linked_to:
            status.state = "linked"
        if status.epochs is not None:
            status.epoch = status.epochs
        return status
    checkpoint = _newest_checkpoint_iteration(step_dir / "state")
    if checkpoint is not None and (status.iteration or 0) < checkpoint:
        status.iteration = checkpoint
    per_epoch = facts.get("per_epoch")
    if status.iterations is None and per_epoch and status.epochs:
        status.iterations = per_epoch * status.epochs
    if per_epoch and status.iteration is not None:
        status.epoch = status.iteration // per_epoch  # epochs completed
    if log_path.exists():
        status.log_age_s = max(0.0, time.time() - log_path.stat().st_mtime)
        status.state = "running" if status.log_age_s <= stale_s else "stopped"
    elif checkpoint is not None:
        status.state = "stopped"
    return status


def _steps_of(results: Path, logs: Path, run: str) -> list[int]:
    steps = set()
    for base in (results / run, logs / run):
        if base.is_dir():
            steps |= {int(m.group(1)) for p in base.iterdir() if (m := _STEP_DIR.match(p.name))}
    return sorted(steps)


def _runs_under(base: Path, depth: int = 3) -> set[str]:
    """Runs under ``base``: folders holding ``step<N>`` folders, as paths relative to ``base``
    (a sweep's members are ``<sweep>/members/<member>``); ``_splits`` and the like skipped."""
    found: set[str] = set()
    if depth == 0 or not base.is_dir():
        return found
    for child in base.iterdir():
        if not child.is_dir() or child.name.startswith((".", "_")) or _STEP_DIR.match(child.name):
            continue
        if any(_STEP_DIR.match(p.name) for p in child.iterdir() if p.is_dir()):
            found.add(child.name)
        found |= {f"{child.name}/{sub}" for sub in _runs_under(child, depth - 1)}
    return found


def collect(results: Path, logs: Path, stale_s: float = 120.0) -> list[StepStatus]:
    """Every run and step found under ``results`` (and ``logs``), runs sorted by name."""
    runs = _runs_under(results) | _runs_under(logs)
    return [
        step_status(results, logs, run, step, stale_s)
        for run in sorted(runs)
        for step in _steps_of(results, logs, run)
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "results", nargs="?", default=Path("results"), type=Path, help="results folder"
    )
    parser.add_argument(
        "--logs", type=Path, help="logs folder (default: logs/ beside the results folder)"
    )
    parser.add_argument(
        "--follow",
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS until no step is running",
    )
    parser.add_argument(
        "--stale",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="an unfinished step whose log is older than this counts as stopped (default 120)",
    )


def run(args: argparse.Namespace) -> int:
    results = args.results
    logs = args.logs or results.resolve().parent / "logs"
    if not results.is_dir():
        raise FileNotFoundError(
            f"results folder {results} does not exist; run from the workflow's folder or pass "
            "its results/ folder"
        )
    while True:
        rows = collect(results, logs, args.stale)
        width = max((len(r.run) for r in rows), default=0)
        text = "\n".join(r.line(width) for r in rows) or f"no runs under {results}"
        if args.follow and sys.stdout.isatty():
            sys.stdout.write("\x1b[2J\x1b[H")  # clear the terminal, cursor home
        print(text, flush=True)
        if not args.follow or not any(r.state == "running" for r in rows):
            return 0
        time.sleep(args.follow)
        if not sys.stdout.isatty():
            print(flush=True)
