"""Atomic writes give the umask's mode (colleagues in the group can read results), replace the
target in one step, and leave nothing behind on failure; NAME=VALUE options are checked."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lgkd_core.engine.checkpoint import atomic_torch_save
from lgkd_core.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    parse_pairs,
    write_ids,
)
from lgkd_core.report import save_png, write_csv


@pytest.fixture
def umask():
    """Run the test under umask 027 (group may read, others nothing), then restore it."""
    before = os.umask(0o027)
    yield 0o027
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_gives_the_umasks_mode(tmp_path, umask):
    fig = Figure()
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    writers = {
        "model.pt": lambda p: atomic_torch_save({"w": torch.ones(2)}, p),
        "metrics.json": lambda p: atomic_write_json(p, {"all": 1.0}),
        "note.txt": lambda p: atomic_write_text(p, "text\n"),
        "ids.txt": lambda p: write_ids(p, ["a", "b"]),
        "table.csv": lambda p: write_csv(pd.DataFrame({"step": [0], "all": [1.0]}), p),
        "miou.png": lambda p: save_png(fig, p),
    }
    for name, write in writers.items():
        path = tmp_path / "sub" / name
        write(path)
        assert _mode(path) == 0o640, (name, oct(_mode(path)))  # 0o666 & ~0o027
        write(path)  # replacing an existing file: the same mode again
        assert _mode(path) == 0o640, name
    assert json.loads((tmp_path / "sub" / "metrics.json").read_text()) == {"all": 1.0}
    assert (tmp_path / "sub" / "ids.txt").read_text() == "a\nb\n"
    assert torch.equal(torch.load(tmp_path / "sub" / "model.pt")["w"], torch.ones(2))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(writers)


def test_default_umask_gives_0644(tmp_path):
    before = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(before)
    assert _mode(tmp_path / "a.txt") == 0o644


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old\n")

    def half_then_fail(fh):
        fh.write(b"new, but only ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_pairs_name_the_option_and_the_bad_item():
    assert parse_pairs(["a=1", " b = x=y "], "--set") == {"a": "1", "b": "x=y"}
    assert parse_pairs(None, "--set") == {}
    for bad in (["a"], ["=1"], ["a="]):
        with pytest.raises(ValueError, match=r"--set expects NAME=VALUE"):
            parse_pairs(bad, "--set")
    with pytest.raises(ValueError, match=r"--table: 'a' is given twice"):
        parse_pairs(["a=1", "a=2"], "--table")
