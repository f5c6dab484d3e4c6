"""How many worker processes a command runs."""

from __future__ import annotations

import os


def num_workers(workers: int) -> int:
    """``workers`` when positive, else one per core this process may run on (at least 1)."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
