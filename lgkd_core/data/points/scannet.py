"""ScanNet v2 raw scans -> (N, 7) labelled points, following the 3DPC-CISS protocol.

Per scene the mesh vertices of ``<scene>_vh_clean_2.ply`` are the points. Only vertices that
belong to an annotated instance (a ``segGroup`` of the aggregation file) are kept, concatenated
group by group in file order (within a group: segment by segment, in the group's segment order,
vertices in ascending index), as the protocol does. A group's raw label goes through the
release's label table (``raw_category`` -> ``nyu40class``) to a class of SCANNET_CLASSES;
names outside the list, and raw labels missing from the table, become ``unannotated`` (0).

Label mappings:

- ``"protocol"`` (default) is the protocol's exact mapping, the one behind its published
  numbers. The table spells the nyu40 class ``refridgerator``, which is not in the class list,
  so refrigerator points become unannotated and class 17 is empty.
- ``"corrected"`` reads ``refridgerator`` as ``refrigerator`` (class 17); results on it are not
  comparable with the published ones.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from lgkd_core.data.points.errors import PointDataWarning, file_error, layout_error
from lgkd_core.data.points_classes import SCANNET_CLASSES

LABEL_TABLE = "scannetv2-labels.combined.tsv"
SPLIT_LISTS = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}
LABEL_MAPPINGS = ("protocol", "corrected")
# Scenes of the v2 release with annotations (the train and val lists together).
RELEASE_SCENES = 1513
_SPELLING_FIX = {"refridgerator": "refrigerator"}


def scene_files(scene_dir: Path) -> dict[str, Path]:
    """The three raw files a scene needs: ``ply``, ``segs``, ``aggregation``."""
    name = scene_dir.name
    return {
        "ply": scene_dir / f"{name}_vh_clean_2.ply",
        "segs": scene_dir / f"{name}_vh_clean_2.0.010000.segs.json",
        "aggregation": scene_dir / f"{name}.aggregation.json",
    }


def find_scenes(source: Path) -> dict[str, Path]:
    """{scene name: scene folder} for every folder under ``source/scans``, sorted by name.

    Raises PointDataError when ``scans/`` or the label table is missing, when there is no scene,
    or when a scene lacks one of its files (all such scenes are named)."""
    source = Path(source)
    scans = source / "scans"
    if not scans.is_dir():
        raise layout_error("scannet", scans, "the scans folder does not exist")
    if not (source / LABEL_TABLE).is_file():
        raise layout_error("scannet", source / LABEL_TABLE, "the label table does not exist")
    scenes = {p.name: p for p in sorted(scans.iterdir()) if p.is_dir()}
    if not scenes:
        raise layout_error("scannet", scans, "no scene folder found")
    broken = [
        f"{name}: missing {', '.join(f.name for f in scene_files(d).values() if not f.is_file())}"
        for name, d in scenes.items()
        if not all(f.is_file() for f in scene_files(d).values())
    ]
    if broken:
        shown = "\n  ".join(broken[:10]) + (
            f"\n  ... {len(broken) - 10} more" if broken[10:] else ""
        )
        raise layout_error(
            "scannet", scans, f"{len(broken)} scene folder(s) are incomplete\n  {shown}\nin"
        )
    return scenes


def read_label_map(table: Path, mapping: str = "protocol") -> dict[str, int]:
    """{raw category: class index} from the release's label table (tab-separated, header row,
    columns ``raw_category`` and ``nyu40class``). A raw category listed twice keeps its last
    row, as the protocol's dictionary does."""
    if mapping not in LABEL_MAPPINGS:
        raise ValueError(f"label mapping must be one of {LABEL_MAPPINGS}, got {mapping!r}")
    table = Path(table)
    if not table.is_file():
        raise layout_error("scannet", table, "the label table does not exist")
    lines = table.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if "raw_category" not in header or "nyu40class" not in header:
        raise file_error("scannet", table, "the header row has no raw_category/nyu40class column")
    raw_col, nyu_col = header.index("raw_category"), header.index("nyu40class")
    index = {name: i for i, name in enumerate(SCANNET_CLASSES)}
    out: dict[str, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) <= max(raw_col, nyu_col):
            raise file_error("scannet", table, f"line {number} has only {len(fields)} columns")
        nyu = fields[nyu_col]
        if mapping == "corrected":
            nyu = _SPELLING_FIX.get(nyu, nyu)
        out[fields[raw_col]] = index.get(nyu, 0)
    return out


def _load_json(path: Path, key: str) -> list:
    try:
        value = json.loads(path.read_bytes())[key]
    except (ValueError, KeyError, TypeError) as exc:
        raise file_error("scannet", path, f"no readable JSON key {key!r} ({exc})") from None
    if not isinstance(value, list):
        raise file_error("scannet", path, f"{key!r} is not a list")
    return value


def _read_vertices(path: Path) -> np.ndarray:
    """(V, 6) float32 x, y, z, red, green, blue of a PLY file's vertex element."""
    from plyfile import PlyData

    try:
        vertex = PlyData.read(str(path))["vertex"].data
    except Exception as exc:  # plyfile raises several types for a damaged file
        raise file_error(
            "scannet", path, f"not a readable PLY with a vertex element ({exc})"
        ) from exc
    fields = ("x", "y", "z", "red", "green", "blue")
    missing = [f for f in fields if f not in (vertex.dtype.names or ())]
    if missing:
        raise file_error("scannet", path, f"the vertex element lacks {', '.join(missing)}")
    out = np.empty((len(vertex), 6), dtype=np.float32)
    for i, f in enumerate(fields):
        out[:, i] = vertex[f]
    return out


def read_scene(scene_dir: Path, label_map: dict[str, int]) -> np.ndarray:
    """One scene as (N, 7) float64 ``[x, y, z, r, g, b, label]``: xyz in metres as in the PLY
    (not shifted), rgb 0-255, N the points of its annotated instances."""
    files = scene_files(Path(scene_dir))
    vertices = _read_vertices(files["ply"])
    seg = np.asarray(_load_json(files["segs"], "segIndices"), dtype=np.int64)
    if seg.shape != (len(vertices),):
        raise file_error(
            "scannet",
            files["segs"],
            f"{seg.size} segIndices for the {len(vertices)} vertices of {files['ply'].name}",
        )
    groups = _load_json(files["aggregation"], "segGroups")

    order = np.argsort(seg, kind="stable")
    ids, starts, counts = np.unique(seg[order], return_index=True, return_counts=True)
    span = dict(zip(ids.tolist(), zip(starts.tolist(), counts.tolist(), strict=True), strict=True))
    picks, labels = [], []
    for g, group in enumerate(groups):
        try:
            segments, raw = group["segments"], group["label"]
        except (KeyError, TypeError):
            raise file_error(
                "scannet", files["aggregation"], f"segGroups[{g}] lacks segments or label"
            ) from None
        for s in segments:
            if s not in span:
                raise file_error(
                    "scannet",
                    files["aggregation"],
                    f"segGroups[{g}] names segment {s}, which {files['segs'].name} does not have",
                )
            a, n = span[s]
            picks.append(order[a : a + n])
            labels.append(np.full(n, label_map.get(raw, 0), dtype=np.float64))
    if not picks:
        warnings.warn(
            f"scannet: {files['aggregation']} has no annotated instance: the scene has no points",
            PointDataWarning,
            stacklevel=2,
        )
        return np.empty((0, 7), dtype=np.float64)
    pick = np.concatenate(picks)
    return np.column_stack([vertices[pick].astype(np.float64), np.concatenate(labels)])


def read_splits(source: Path, scenes: list[str]) -> dict[str, list[str]]:
    """{split: scene names} from the release's scene lists; scenes in neither list go to
    ``unlisted``. Without the lists every scene is ``train`` (with a warning). Listed scenes
    absent from ``scans/`` give a subset warning."""
    source = Path(source)
    paths = {split: source / name for split, name in SPLIT_LISTS.items()}
    if not all(p.is_file() for p in paths.values()):
        warnings.warn(
            f"scannet: no {' / '.join(SPLIT_LISTS.values())} in {source}: all {len(scenes)} "
            "scenes are recorded as train",
            PointDataWarning,
            stacklevel=2,
        )
        if len(scenes) < RELEASE_SCENES:
            _subset_warning(len(scenes), f"the release's {RELEASE_SCENES} annotated scenes")
        return {"train": list(scenes), "val": []}
    present = set(scenes)
    listed = {split: p.read_text().split() for split, p in paths.items()}
    out = {split: [s for s in names if s in present] for split, names in listed.items()}
    missing = sum(len(names) for names in listed.values()) - sum(map(len, out.values()))
    if missing:
        total = sum(map(len, listed.values()))
        _subset_warning(sum(map(len, out.values())), f"the {total} scenes of the split lists")
    named = {s for names in listed.values() for s in names}
    unlisted = [s for s in scenes if s not in named]
    if unlisted:
        warnings.warn(
            f"scannet: {len(unlisted)} scene(s) are in neither split list (e.g. {unlisted[0]}); "
            "they are recorded under 'unlisted'",
            PointDataWarning,
            stacklevel=2,
        )
        out["unlisted"] = unlisted
    return out


def _subset_warning(found: int, of: str) -> None:
    warnings.warn(
        f"scannet: reading a subset: {found} of {of}",
        PointDataWarning,
        stacklevel=3,
    )
