"""S3DIS (Stanford3dDataset_v1.2_Aligned_Version) rooms -> (N, 7) labelled points.

A room is the concatenation of its ``Annotations/<class>_<k>.txt`` files (lines
``x y z r g b``), taken in sorted file-name order (the protocol took the file system's order,
which only changes the order of points inside a block). The class is the file-name prefix;
prefixes outside S3DIS_CLASSES (``stairs``) become ``clutter``, as in the protocol. Rooms are
named ``Area_<i>_<room>``; Area_5 is the validation area, the others train.

One release file is known to be damaged: ``Area_5/hallway_6/Annotations/ceiling_1.txt`` has a
NUL byte on line 180389. NUL bytes are stripped, and a line that still does not parse as six
numbers is repaired by dropping its stray characters or, failing that, skipped; each repair
gives a warning that names the file and the lines.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np

from lgkd_core.data.points.errors import PointDataWarning, file_error, layout_error
from lgkd_core.data.points_classes import S3DIS_CLASSES

RELEASE_DIR = "Stanford3dDataset_v1.2_Aligned_Version"
AREAS = tuple(f"Area_{i}" for i in range(1, 7))
VAL_AREA = "Area_5"
_NOT_NUMERIC = re.compile(rb"[^0-9eE+\-. \t]")


def release_root(source: Path) -> Path:
    """The folder holding ``Area_<i>``: ``source`` itself or its Aligned_Version subfolder."""
    source = Path(source)
    nested = source / RELEASE_DIR
    if nested.is_dir():
        return nested
    if any((source / a).is_dir() for a in AREAS):
        return source
    raise layout_error("s3dis", source, "no Area_<i> folder found")


def find_rooms(source: Path) -> dict[str, Path]:
    """{``Area_<i>_<room>``: room folder}, area by area, rooms sorted by name. Missing areas
    give a subset warning; a room without ``Annotations/*.txt`` raises PointDataError."""
    root = release_root(source)
    missing = [a for a in AREAS if not (root / a).is_dir()]
    if missing:
        warnings.warn(
            f"s3dis: reading a subset: {', '.join(missing)} missing under {root}",
            PointDataWarning,
            stacklevel=2,
        )
    rooms: dict[str, Path] = {}
    for area in AREAS:
        if (root / area).is_dir():
            for room in sorted(p for p in (root / area).iterdir() if p.is_dir()):
                if not any((room / "Annotations").glob("*.txt")):
                    raise layout_error("s3dis", room / "Annotations", "no <class>_<k>.txt file in")
                rooms[f"{area}_{room.name}"] = room
    if not rooms:
        raise layout_error("s3dis", root, "no room folder found")
    return rooms


def room_split(name: str) -> str:
    """``val`` for the rooms of Area_5, ``train`` for the others."""
    return "val" if name.startswith(f"{VAL_AREA}_") else "train"


def class_of(file_name: str) -> int:
    """Class index of an annotation file: its prefix before the first ``_``, else clutter."""
    prefix = file_name.split("_")[0]
    return (
        S3DIS_CLASSES.index(prefix) if prefix in S3DIS_CLASSES else S3DIS_CLASSES.index("clutter")
    )


def _line_numbers(raw: bytes, positions: list[int]) -> list[int]:
    return sorted({raw.count(b"\n", 0, p) + 1 for p in positions})


def _shown(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:5])) + (
        f" (+{len(numbers) - 5} more)" if numbers[5:] else ""
    )


def _parse_lines(raw: bytes, path: Path) -> np.ndarray:
    """Line by line, for a file that the fast parser refused: repair or skip bad lines."""
    rows, repaired, skipped = [], [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        for attempt, text in enumerate((line, _NOT_NUMERIC.sub(b"", line))):
            try:
                values = [float(t) for t in text.split()]
            except ValueError:
                continue
            if len(values) == 6:
                rows.append(values)
                if attempt:
                    repaired.append(number)
                break
        else:
            skipped.append(number)
    if repaired:
        warnings.warn(
            f"s3dis: {path}: dropped stray characters on line(s) {_shown(repaired)}",
            PointDataWarning,
            stacklevel=3,
        )
    if skipped:
        warnings.warn(
            f"s3dis: {path}: skipped {len(skipped)} line(s) that are not six numbers: "
            f"{_shown(skipped)}",
            PointDataWarning,
            stacklevel=3,
        )
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def read_annotation(path: Path) -> np.ndarray:
    """One ``<class>_<k>.txt`` file as (n, 6) float64 x, y, z, r, g, b."""
    path = Path(path)
    raw = path.read_bytes()
    if b"\0" in raw:
        where = [m.start() for m in re.finditer(rb"\0", raw)]
        warnings.warn(
            f"s3dis: {path}: stripped {len(where)} NUL byte(s) on line(s) "
            f"{_shown(_line_numbers(raw, where))}",
            PointDataWarning,
            stacklevel=2,
        )
        raw = raw.replace(b"\0", b"")
    if not raw.strip():
        return np.empty((0, 6), dtype=np.float64)
    try:
        data = np.loadtxt(io.BytesIO(raw), dtype=np.float64, ndmin=2)
        if data.shape[1] != 6:
            raise ValueError(f"{data.shape[1]} columns")
    except ValueError:
        data = _parse_lines(raw, path)
    if len(data) == 0:
        raise file_error("s3dis", path, "no line of six numbers x y z r g b")
    return data


def read_room(room_dir: Path) -> np.ndarray:
    """One room as (N, 7) float64 ``[x, y, z, r, g, b, label]`` (xyz not shifted)."""
    parts = []
    for f in sorted((Path(room_dir) / "Annotations").glob("*.txt")):
        points = read_annotation(f)
        parts.append(np.column_stack([points, np.full(len(points), class_of(f.stem), float)]))
    if not parts:
        raise layout_error("s3dis", Path(room_dir) / "Annotations", "no <class>_<k>.txt file in")
    return np.concatenate(parts)
