"""Session fixtures shared by the test modules (plain helpers: helpers.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lgkd_core.data.synthetic import synthesize


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Callable[..., Path]:
    """``synthetic_data(seed=, n_train=, n_val=, size=64)``: a data root holding the embedded
    synthetic set (``ROOT/synthetic``), generated once per set of arguments in the session.
    Read-only for the tests: copy it to change it."""
    made: dict[tuple, Path] = {}

    def make(seed: int, n_train: int, n_val: int, size: int = 64) -> Path:
        key = (seed, n_train, n_val, size)
        if key not in made:
            root = tmp_path_factory.mktemp(f"synthetic-{seed}-{n_train}-{n_val}-{size}")
            synthesize(root / "synthetic", seed=seed, n_train=n_train, n_val=n_val, size=size,
                       workers=1)  # fmt: skip
            made[key] = root
        return made[key]

    return make
