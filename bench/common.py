"""Shared helpers of the bench scripts: arguments, machine description, timing, output lines.

Every script prints the machine, a small table and one line per comparison::

    RATIO <name>: <x>x vs <named baseline> (target >= T: met/not met)

Timings are medians over repeats after warm-up calls. Competing callables are timed
round-robin (baseline, ours, baseline, ours, ...) so that a load change on a shared machine
hits both sides alike.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(description: str, add: Callable[[argparse.ArgumentParser], None] | None = None):
    """``--quick`` (seconds, for the smoke test), ``--threads`` (torch intra-op threads)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, runs in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    if add is not None:
        add(parser)
    return parser.parse_args()


def set_threads(n: int) -> None:
    """torch intra-op threads (and OpenMP/MKL for any library started after this)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, str]:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    try:
        info["load_avg_1min"] = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_machine(title: str) -> None:
    print(f"== {title}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()))
    sys.stdout.flush()


@dataclass
class Timing:
    """Seconds per call: ``median`` and ``min`` over ``times``."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)


def time_calls(
    fns: dict[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Seconds per call of each callable, timed round-robin after ``warmup`` calls each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        if sync is not None:
            sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(t) for name, t in times.items()}


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table (floats with 4 significant digits)."""

    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[k]) for r in cells)) for k, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()


def ratio_line(name: str, ratio: float, baseline: str, target: float) -> str:
    """Print and return ``RATIO name: Rx vs baseline (target >= T: met/not met)``."""
    verdict = "met" if round(ratio, 2) >= target else "not met"  # as printed
    line = f"RATIO {name}: {ratio:.2f}x vs {baseline} (target >= {target:g}: {verdict})"
    print(line)
    sys.stdout.flush()
    return line
