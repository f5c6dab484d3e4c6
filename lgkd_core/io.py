"""Writing result files safely, and the ``NAME=VALUE`` options of the command line.

Every file the pipeline writes goes through :func:`atomic_write_bytes`: a temporary file in the
target's folder, flushed to disk, given the mode a plain ``open()`` would give (``0o666`` less
the umask: 0644 under umask 022, so colleagues in the group can read the results; ``mkstemp``
alone would leave 0600), then renamed over the target. A reader never sees half a file and a
killed writer never leaves one. Nothing here imports torch: light commands start fast.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    # The only portable way to read the umask is to set it; put it straight back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path | str, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, give it the
    umask's mode and rename it into place; on any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(path: Path | str, obj: Any, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def write_ids(path: Path | str, ids: Iterable[str]) -> None:
    """One id per line, atomically."""
    atomic_write_text(path, "".join(f"{i}\n" for i in ids))


def parse_pairs(items: Iterable[str] | None, option: str) -> dict[str, str]:
    """``NAME=VALUE`` items of a repeatable option as a dict (names stripped, each name once).

    Raises ValueError naming ``option`` and the bad item; the CLI prints it as one line."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise ValueError(f"{option} expects NAME=VALUE, got {item!r}")
        if name in out:
            raise ValueError(f"{option}: {name!r} is given twice; give each name once")
        out[name] = value.strip()
    return out
