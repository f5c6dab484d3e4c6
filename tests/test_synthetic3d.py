"""The synthetic 3D rooms: same seed same bytes, the block format of prepare-points, every class
in every split, and the class2blocks rule recomputed from the files."""

import json
import re

import numpy as np
import pytest

from lgkd_core.cli import main
from lgkd_core.data.synthetic3d import SYNTHETIC3D_CLASSES, draw_room, synthesize3d
from lgkd_core.tasks import DATASET_CLASSES

SMALL = {"train_rooms": 2, "val_rooms": 1, "density": 200.0}
NAME = re.compile(r"^(train|val)_room\d{4}_block_\d+\.npy$")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic3d")
    manifest = synthesize3d(out, seed=0, **SMALL)
    return out, manifest


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(generated, tmp_path):
    out, _ = generated
    synthesize3d(tmp_path / "again", seed=0, **SMALL)
    assert _files(tmp_path / "again") == _files(out)
    synthesize3d(tmp_path / "other", seed=1, **SMALL)
    other = _files(tmp_path / "other")
    assert (
        other["blocks/train_room0000_block_0.npy"]
        != _files(out)["blocks/train_room0000_block_0.npy"]
    )


def test_a_room_does_not_depend_on_the_room_count(generated, tmp_path):
    out, _ = generated
    synthesize3d(tmp_path, seed=0, **{**SMALL, "train_rooms": 1, "val_rooms": 0})
    one = _files(tmp_path)
    both = _files(out)
    blocks = [k for k in one if k.startswith("blocks/")]
    assert blocks and all(one[k] == both[k] for k in blocks)
    assert not np.array_equal(draw_room(4, "train", 1, 100.0), draw_room(4, "val", 1, 100.0))


def test_scene_format():
    room = draw_room(0, "val", 0, 150.0)
    assert room.dtype == np.float32 and room.ndim == 2 and room.shape[1] == 7
    np.testing.assert_array_equal(room[:, :3].min(axis=0), 0.0)
    assert room[:, 3:6].min() >= 0 and room[:, 3:6].max() <= 255
    assert set(np.unique(room[:, 6]).astype(int)) == set(range(len(SYNTHETIC3D_CLASSES)))


def test_block_files_and_manifest(generated):
    out, manifest = generated
    files = sorted((out / "blocks").iterdir())
    assert files and all(NAME.match(p.name) for p in files)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "synthetic3d"
    assert manifest["classes"] == list(SYNTHETIC3D_CLASSES)
    assert manifest["block_count"] == len(files)
    assert manifest["splits"] == {
        "train": ["train_room0000", "train_room0001"],
        "val": ["val_room0000"],
    }
    assert manifest["scenes"] == manifest["splits"]["train"] + manifest["splits"]["val"]
    total = 0
    for p in files:
        block = np.load(p)
        assert block.dtype == np.float32 and block.ndim == 2 and block.shape[1] == 7
        assert len(block) >= manifest["settings"]["min_points"]
        total += len(block)
        # A 1 m x 1 m x-y cell of the scene (closed edges, so a span of at most 1 m).
        assert (block[:, :2].max(axis=0) - block[:, :2].min(axis=0) <= 1.0 + 1e-5).all()
        assert block[:, :3].min() >= 0
        assert block[:, 3:6].min() >= 0 and block[:, 3:6].max() <= 255
        labels = block[:, 6]
        assert np.array_equal(labels, np.round(labels))
        assert labels.min() >= 0 and labels.max() < len(SYNTHETIC3D_CLASSES)
    assert manifest["point_count"] == total
    for scene in manifest["scenes"]:
        blocks = sorted(int(p.stem.rsplit("_", 1)[1]) for p in files if p.name.startswith(scene))
        assert blocks == list(range(len(blocks)))  # numbered without gaps


def test_every_class_in_every_split(generated):
    out, manifest = generated
    c2b = json.loads((out / "class2blocks.json").read_text())
    assert sorted(c2b, key=int) == [str(c) for c in range(len(SYNTHETIC3D_CLASSES))]
    for split, scenes in manifest["splits"].items():
        present = set()
        for p in (out / "blocks").iterdir():
            if p.name.rsplit("_block_", 1)[0] in scenes:
                present |= set(np.unique(np.load(p)[:, 6]).astype(int))
        assert present == set(range(len(SYNTHETIC3D_CLASSES))), split
        for c, names in c2b.items():
            assert any(n.rsplit("_block_", 1)[0] in scenes for n in names), (split, c)
    assert DATASET_CLASSES["synthetic3d"] == ("background", *SYNTHETIC3D_CLASSES)


def test_class2blocks_rule(generated):
    out, manifest = generated
    c2b = json.loads((out / "class2blocks.json").read_text())
    expected = {str(c): [] for c in range(len(SYNTHETIC3D_CLASSES))}
    for p in (out / "blocks").iterdir():
        labels = np.load(p)[:, 6].astype(int)
        counts = np.bincount(labels, minlength=len(SYNTHETIC3D_CLASSES))
        for c, n in enumerate(counts):
            if n > max(0.05 * len(labels), 100):
                expected[str(c)].append(p.stem)
    assert {c: sorted(v) for c, v in c2b.items()} == {c: sorted(v) for c, v in expected.items()}
    assert manifest["blocks_per_class"] == {c: len(v) for c, v in c2b.items()}


def test_cli_and_stale_blocks_are_removed(tmp_path):
    args = ["synthesize3d", "--out", str(tmp_path), "--density", "100"]
    assert main([*args, "--train-rooms", "2", "--val-rooms", "0"]) == 0
    assert any(p.name.startswith("train_room0001") for p in (tmp_path / "blocks").iterdir())
    assert main([*args, "--train-rooms", "1", "--val-rooms", "0"]) == 0
    names = [p.name for p in (tmp_path / "blocks").iterdir()]
    assert names and all(n.startswith("train_room0000_") for n in names)
    assert json.loads((tmp_path / "manifest.json").read_text())["block_count"] == len(names)


def test_bad_sizes():
    with pytest.raises(ValueError, match="train room"):
        synthesize3d("/nonexistent", train_rooms=0)
    with pytest.raises(ValueError, match="density"):
        synthesize3d("/nonexistent", density=0)
