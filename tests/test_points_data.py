"""Raw ScanNet v2 / S3DIS files -> blocks (lgkd_core.data.points), on tiny files written here in
the exact raw formats. Expected blocks and class sets are recomputed with plain loops."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from lgkd_core.data.points import PointDataError, PointDataWarning, holds_class, prepare_points
from lgkd_core.data.points.blocks import split_blocks
from lgkd_core.data.points.s3dis import read_annotation
from lgkd_core.data.points.scannet import read_label_map, read_scene
from lgkd_core.data.points_classes import S3DIS_CLASSES, SCANNET_CLASSES

from helpers import ENV, REPO

# The readers' warnings (subset, no split lists) are checked where they matter, not everywhere.
pytestmark = pytest.mark.filterwarnings("ignore::lgkd_core.data.points.PointDataWarning")

# The header of the release's label table (17 tab-separated columns).
TSV_HEADER = (
    "id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\teigen13class\t"
    "ModelNet40\tModelNet10\tShapeNetCore55\tsynsetoffset\twnsynsetid\twnsynsetkey\tmpcat40\t"
    "mpcat40index"
)
TSV_ROWS = [  # raw_category, nyu40id, nyu40class
    ("chair", 5, "chair"),
    ("fridge", 24, "refridgerator"),  # the table's spelling
    ("wall", 1, "wall"),
    ("lamp", 35, "lamp"),  # not a class of the list -> unannotated
]
# segment -> raw label of its group; segment 99 belongs to no group (dropped), and "mystery" is
# not in the table (unannotated).
GROUPS = [("chair", [8, 3]), ("fridge", [5]), ("mystery", [13]), ("wall", [21]), ("lamp", [34])]
SEGMENTS = (3, 5, 8, 13, 21, 34, 99)
CLASS = {"chair": 3, "wall": 1, "lamp": 0, "mystery": 0}


# -- independent expectations ---------------------------------------------------------------------
def loop_blocks(rows: list[list[float]], min_points: int) -> list[np.ndarray]:
    """The protocol's tiling written as a plain loop: shift to the minimum, closed 1 m cells
    (a point on an edge is in both), cells x-major, small cells dropped."""
    lo = [min(r[k] for r in rows) for k in range(3)]
    shifted = [[r[0] - lo[0], r[1] - lo[1], r[2] - lo[2], *r[3:]] for r in rows]
    nx = max(1, math.ceil(max(r[0] for r in shifted)))
    ny = max(1, math.ceil(max(r[1] for r in shifted)))
    out = []
    for i in range(nx):
        for j in range(ny):
            cell = [r for r in shifted if i <= r[0] <= i + 1 and j <= r[1] <= j + 1]
            if len(cell) >= min_points:
                out.append(np.array(cell, dtype=np.float32))
    return out


def rule(count: int, total: int) -> bool:
    return count > max(Fraction(5, 100) * total, 100)


def loop_class2blocks(blocks: dict[str, np.ndarray], num_classes: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {str(c): [] for c in range(num_classes)}
    for name, block in blocks.items():
        labels = [int(v) for v in block[:, 6]]
        for c in range(num_classes):
            if rule(labels.count(c), len(labels)):
                out[str(c)].append(name)
    return out


def load_blocks(out: Path) -> dict[str, np.ndarray]:
    manifest = json.loads((out / "manifest.json").read_text())
    names = [
        p.stem
        for s in manifest["scenes"]
        for p in sorted(
            (out / "blocks").glob(f"{s}_block_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1])
        )
    ]
    return {n: np.load(out / "blocks" / f"{n}.npy") for n in names}


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


# -- raw ScanNet -----------------------------------------------------------------------------------
def scannet_scene(seed: int, n: int = 1500) -> dict:
    rng = np.random.default_rng(seed)
    # Coordinates on a 1/64 m grid: exact in float32, and many points on the 1 m cell edges.
    xyz = rng.integers(0, [2 * 64 + 20, 64 + 30, 160], size=(n, 3)) / 64 + [10.25, -3.5, 0.75]
    return {
        "xyz": xyz.astype(np.float32),
        "rgb": rng.integers(0, 256, size=(n, 3)).astype(np.uint8),
        # Many fridge (segment 5) points, so that the corrected mapping puts blocks in class 17.
        "seg": rng.choice(SEGMENTS, size=n, p=[0.15, 0.3, 0.15, 0.1, 0.1, 0.1, 0.1]).tolist(),
    }


def write_scannet(root: Path, scenes: dict[str, dict]) -> Path:
    (root / "scans").mkdir(parents=True)
    rows = [
        f"{i + 1}\t{raw}\t{raw}\t1\t{nid}\t0\totherprop\t{cls}\t" + "\t" * 8 + "0"
        for i, (raw, nid, cls) in enumerate(TSV_ROWS)
    ]
    (root / "scannetv2-labels.combined.tsv").write_text("\n".join([TSV_HEADER, *rows]) + "\n")
    for name, s in scenes.items():
        d = root / "scans" / name
        d.mkdir()
        vertex = np.empty(
            len(s["xyz"]),
            dtype=[(k, "<f4") for k in "xyz"] + [(k, "u1") for k in ("red", "green", "blue")],
        )
        for k, col in zip("xyz", s["xyz"].T, strict=True):
            vertex[k] = col
        for k, col in zip(("red", "green", "blue"), s["rgb"].T, strict=True):
            vertex[k] = col
        PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(
            str(d / f"{name}_vh_clean_2.ply")
        )
        (d / f"{name}_vh_clean_2.0.010000.segs.json").write_text(
            json.dumps({"sceneId": name, "segIndices": s["seg"]})
        )
        groups = [
            {"id": i, "objectId": i, "label": lab, "segments": seg}
            for i, (lab, seg) in enumerate(GROUPS)
        ]
        (d / f"{name}.aggregation.json").write_text(
            json.dumps({"sceneId": name, "segGroups": groups})
        )
    return root


def expected_scannet_rows(s: dict, fridge: int) -> list[list[float]]:
    classes = {**CLASS, "fridge": fridge}
    rows = []
    for label, segments in GROUPS:
        for seg in segments:
            for v in range(len(s["seg"])):
                if s["seg"][v] == seg:
                    rows.append(
                        [*map(float, s["xyz"][v]), *map(float, s["rgb"][v]), float(classes[label])]
                    )
    return rows


@pytest.fixture
def scannet_root(tmp_path) -> tuple[Path, dict]:
    scenes = {"scene0000_00": scannet_scene(0, 2000), "scene0001_00": scannet_scene(1, 1500)}
    return write_scannet(tmp_path / "scannet", scenes), scenes


# -- raw S3DIS -------------------------------------------------------------------------------------
def uniform(rng, n: int, x: tuple[float, float], y: tuple[float, float]) -> np.ndarray:
    pts = np.column_stack([rng.uniform(*x, n), rng.uniform(*y, n), rng.uniform(0.1, 2.9, n)])
    return np.column_stack([np.round(pts, 3), rng.integers(0, 256, (n, 3))])


def write_txt(path: Path, pts: np.ndarray) -> None:
    lines = (
        f"{a:.3f} {b:.3f} {c:.3f} {r:.0f} {g:.0f} {bl:.0f}\n" for a, b, c, r, g, bl in pts.tolist()
    )
    path.write_text("".join(lines))


def write_s3dis(root: Path) -> Path:
    """Area_1/office_1: cell (0, 0) holds 2020 points (floor 1914, ceiling 5 with an anchor at
    the origin, table 101 = exactly 5 %), cell (0, 1) 10 clutter points (dropped), cell (1, 0)
    2002 points (floor 1800, table 102 > 5 %, stairs -> clutter 100 = not more than 100).
    Area_5/hallway_1 is too small for a block. The other areas are absent."""
    rng = np.random.default_rng(0)
    rel = root / "Stanford3dDataset_v1.2_Aligned_Version"
    ann = rel / "Area_1" / "office_1" / "Annotations"
    ann.mkdir(parents=True)
    c0, c1, c01 = ((0.1, 0.9), (0.1, 0.9)), ((1.1, 1.9), (0.1, 0.9)), ((0.1, 0.9), (1.1, 1.9))
    write_txt(
        ann / "floor_1.txt", np.concatenate([uniform(rng, 1914, *c0), uniform(rng, 1800, *c1)])
    )
    write_txt(ann / "table_1.txt", uniform(rng, 101, *c0))
    write_txt(ann / "table_2.txt", uniform(rng, 102, *c1))
    write_txt(ann / "stairs_1.txt", uniform(rng, 100, *c1))
    write_txt(ann / "clutter_3.txt", uniform(rng, 10, *c01))
    ceiling = "0.000 0.000 0.000 1 2 3\n" + "".join(f"0.5{k} 0.5 3.0 9 9 9\n" for k in range(4))
    # The release's defect: a NUL byte inside a line (here line 3).
    lines = ceiling.splitlines(keepends=True)
    lines[2] = lines[2][:3] + "\0" + lines[2][3:]
    (ann / "ceiling_1.txt").write_bytes("".join(lines).encode())
    small = rel / "Area_5" / "hallway_1" / "Annotations"
    small.mkdir(parents=True)
    write_txt(small / "wall_1.txt", uniform(rng, 50, *c0))
    return root


def s3dis_rows(root: Path, room: str) -> list[list[float]]:
    rows = []
    ann = root / "Stanford3dDataset_v1.2_Aligned_Version" / room / "Annotations"
    for f in sorted(ann.glob("*.txt")):
        prefix = f.name.split("_")[0]
        label = S3DIS_CLASSES.index(prefix) if prefix in S3DIS_CLASSES else 12
        for line in f.read_bytes().replace(b"\0", b"").decode().splitlines():
            rows.append([*map(float, line.split()), float(label)])
    return rows


# -- tests -----------------------------------------------------------------------------------------
def test_class_lists():
    assert len(SCANNET_CLASSES) == 21 and SCANNET_CLASSES[17] == "refrigerator"
    assert SCANNET_CLASSES[0] == "unannotated" and SCANNET_CLASSES[20] == "otherfurniture"
    assert (
        len(S3DIS_CLASSES) == 13
        and S3DIS_CLASSES[0] == "ceiling"
        and S3DIS_CLASSES[-1] == "clutter"
    )


def test_split_blocks_matches_a_loop():
    s = scannet_scene(3, 2500)
    rows = [
        [*map(float, p), *map(float, c), float(i % 5)]
        for i, (p, c) in enumerate(zip(s["xyz"], s["rgb"], strict=True))
    ]
    points = np.array(rows)
    shifted_x = points[:, 0] - points[:, 0].min()
    assert np.any(shifted_x == 1.0) and np.any(shifted_x == 2.0)  # edge points exist
    for min_points in (1, 300):
        got = split_blocks(points, min_points=min_points)
        want = loop_blocks(rows, min_points)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.float32 and g.shape[1] == 7
            np.testing.assert_array_equal(g, w)
    # The 0.3 m strip beyond x = 2 makes small blocks that min_points drops.
    assert len(split_blocks(points, min_points=300)) < len(split_blocks(points, min_points=1))
    # Edge points are in two blocks: more rows than points.
    assert sum(map(len, split_blocks(points, min_points=1))) > len(points)


def test_class_rule_boundary():
    assert not holds_class(100, 1000) and holds_class(101, 1000)  # the 100-point floor
    assert not holds_class(200, 4000) and holds_class(201, 4000)  # exactly 5 % is not more
    assert not holds_class(101, 2020) and holds_class(102, 2020)


def test_label_map_and_refrigerator_quirk(scannet_root):
    root, scenes = scannet_root
    table = root / "scannetv2-labels.combined.tsv"
    protocol = read_label_map(table)
    corrected = read_label_map(table, "corrected")
    assert protocol == {"chair": 3, "fridge": 0, "wall": 1, "lamp": 0}
    assert corrected == {**protocol, "fridge": 17}
    s = scenes["scene0000_00"]
    for mapping, fridge in ((protocol, 0), (corrected, 17)):
        got = read_scene(root / "scans" / "scene0000_00", mapping)
        want = np.array(expected_scannet_rows(s, fridge))
        np.testing.assert_array_equal(got, want)
    assert len(got) == sum(1 for seg in s["seg"] if seg != 99)


def test_scannet_prepare_blocks_index_and_resume(scannet_root, tmp_path):
    root, scenes = scannet_root
    out = tmp_path / "out"
    with pytest.warns(PointDataWarning, match="recorded as train"):
        manifest = prepare_points("scannet", root, out, workers=1, min_points=200)
    blocks = load_blocks(out)
    want = {
        f"{name}_block_{i}": b
        for name, s in scenes.items()
        for i, b in enumerate(loop_blocks(expected_scannet_rows(s, 0), 200))
    }
    assert blocks.keys() == want.keys() and len(want) >= 3
    for name, b in want.items():
        np.testing.assert_array_equal(blocks[name], b)
    c2b = json.loads((out / "class2blocks.json").read_text())
    assert c2b == loop_class2blocks(blocks, 21)
    assert c2b["17"] == [] and c2b["3"]  # protocol mapping: no refrigerator block
    assert manifest["block_count"] == len(want)
    assert manifest["splits"] == {"train": ["scene0000_00", "scene0001_00"], "val": []}
    assert manifest["settings"]["label_mapping"] == "protocol"

    # A second run rewrites nothing; with one index gone, only that scene is redone.
    before = stamps(out / "blocks")
    prepare_points("scannet", root, out, workers=1, min_points=200)
    assert stamps(out / "blocks") == before
    (out / "index" / "scene0001_00.json").unlink()
    prepare_points("scannet", root, out, workers=1, min_points=200)
    after = stamps(out / "blocks")
    assert after.keys() == before.keys()
    changed = {n for n in after if after[n] != before[n]}
    assert changed and all(n.startswith("scene0001_00_") for n in changed)
    # Other settings redo every scene and remove the blocks they no longer keep.
    manifest = prepare_points("scannet", root, out, workers=1, min_points=10**6)
    assert manifest["block_count"] == 0 and not any((out / "blocks").iterdir())

    # Corrected mapping: the refrigerator points come back as class 17.
    out2 = tmp_path / "corrected"
    with pytest.warns(PointDataWarning):
        prepare_points("scannet", root, out2, workers=1, min_points=200, label_mapping="corrected")
    blocks2 = load_blocks(out2)
    c2b2 = json.loads((out2 / "class2blocks.json").read_text())
    assert c2b2 == loop_class2blocks(blocks2, 21) and c2b2["17"]


def test_scannet_split_lists(scannet_root, tmp_path):
    root, _ = scannet_root
    (root / "scannetv2_train.txt").write_text("scene0000_00\nscene0007_00\n")
    (root / "scannetv2_val.txt").write_text("scene0001_00\n")
    with pytest.warns(PointDataWarning, match="subset: 2 of the 3 scenes of the split lists"):
        manifest = prepare_points("scannet", root, tmp_path / "out", workers=1, min_points=200)
    assert manifest["splits"] == {"train": ["scene0000_00"], "val": ["scene0001_00"]}


def test_s3dis_prepare(tmp_path):
    root = write_s3dis(tmp_path / "s3dis")
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = prepare_points("s3dis", root, out, workers=1)
    texts = [str(w.message) for w in caught if issubclass(w.category, PointDataWarning)]
    assert any("ceiling_1.txt" in t and "NUL" in t and "line(s) 3" in t for t in texts), texts
    assert any("subset" in t and "Area_2" in t for t in texts), texts

    blocks = load_blocks(out)
    want = loop_blocks(s3dis_rows(root, "Area_1/office_1"), 1000)
    assert list(blocks) == ["Area_1_office_1_block_0", "Area_1_office_1_block_1"]
    for got, w in zip(blocks.values(), want, strict=True):
        np.testing.assert_array_equal(got, w)
    assert [len(b) for b in blocks.values()] == [2020, 2002]
    c2b = json.loads((out / "class2blocks.json").read_text())
    assert c2b == loop_class2blocks(blocks, 13)
    # floor (1) in both, table (7) only where it is above 5 %, clutter (12) at exactly 100: none.
    assert c2b["1"] == list(blocks) and c2b["7"] == ["Area_1_office_1_block_1"] and c2b["12"] == []
    assert manifest["splits"] == {"train": ["Area_1_office_1"], "val": ["Area_5_hallway_1"]}
    assert manifest["blocks_per_split"] == {"train": 2, "val": 0}


def test_s3dis_bad_lines(tmp_path):
    f = tmp_path / "chair_1.txt"
    f.write_bytes(b"1 2 3 4 5 6\n1.5 2 3 4 5 6x\nnot a point\n7 8 9 10 11 12\n")
    with pytest.warns(PointDataWarning) as record:
        data = read_annotation(f)
    np.testing.assert_array_equal(
        data, [[1, 2, 3, 4, 5, 6], [1.5, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
    )
    texts = " | ".join(str(w.message) for w in record)
    assert (
        "stray characters on line(s) 2" in texts and "skipped 1 line(s)" in texts and ": 3" in texts
    )


def test_missing_folders_name_path_layout_and_request(tmp_path, scannet_root):
    with pytest.raises(PointDataError) as err:
        prepare_points("scannet", tmp_path / "nowhere", tmp_path / "o")
    text = str(err.value)
    assert str(tmp_path / "nowhere" / "scans") in text and "segs.json" in text
    assert "scannet@googlegroups.com" in text
    root, _ = scannet_root
    (root / "scannetv2-labels.combined.tsv").unlink()
    with pytest.raises(PointDataError, match="label table does not exist") as err:
        prepare_points("scannet", root, tmp_path / "o")
    assert str(root / "scannetv2-labels.combined.tsv") in str(err.value)
    with pytest.raises(PointDataError, match=r"goo\.gl/forms/4SoGp4KtH1jfRqEj2") as err:
        prepare_points("s3dis", tmp_path / "nowhere", tmp_path / "o")
    assert "Annotations/<class>_<k>.txt" in str(err.value)


def test_incomplete_scene_is_named(scannet_root, tmp_path):
    root, _ = scannet_root
    (root / "scans" / "scene0001_00" / "scene0001_00.aggregation.json").unlink()
    with pytest.raises(PointDataError, match=r"scene0001_00: missing scene0001_00\.aggregation"):
        prepare_points("scannet", root, tmp_path / "o")


def test_cli_end_to_end(tmp_path):
    root = write_s3dis(tmp_path / "s3dis")
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "lgkd_core", "prepare-points", "--dataset", "s3dis"]
    run = subprocess.run(
        [*cmd, "--source", str(root), "--out", str(out), "--workers", "2"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "NUL" in run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["block_count"] == 2 and manifest["dataset"] == "s3dis"
    before = stamps(out / "blocks")
    again = subprocess.run(
        [*cmd, "--source", str(root), "--out", str(out)],  # default workers: one per core
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert stamps(out / "blocks") == before and "2 already done, 0 to cut" in again.stderr
    with pytest.warns(PointDataWarning):
        prepare_points("s3dis", root, tmp_path / "lib", workers=1)
    for p in (out / "blocks").iterdir():
        assert p.read_bytes() == (tmp_path / "lib" / "blocks" / p.name).read_bytes()
    bad = subprocess.run(
        [*cmd, "--source", str(tmp_path / "none"), "--out", str(out)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (
        bad.returncode == 2
        and "goo.gl/forms" in bad.stderr
        and str(tmp_path / "none") in bad.stderr
    )
