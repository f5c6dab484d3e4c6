"""The embedded dataset generator: determinism, VOC layout, label content, manifest behaviour."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lgkd_core.data import synthetic
from lgkd_core.data.synthetic import SyntheticDatasetError, synthesize
from lgkd_core.tasks import get_task

SMALL = {"n_train": 40, "n_val": 20, "size": 64}


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by its relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_list(root: Path, split: str) -> list[str]:
    name = {"train": "train_aug.txt", "val": "val.txt"}[split]
    return (root / "list" / name).read_text().splitlines()


def load_split(root: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image uint8 (H, W, 3), mask uint8 (H, W)) for every line of the split's list."""
    pairs = []
    for line in read_list(root, split):
        img_rel, mask_rel = line.split()
        image = np.asarray(Image.open(root / "VOCdevkit/VOC2012" / img_rel.lstrip("/")))
        mask = np.asarray(Image.open(root / mask_rel.lstrip("/")))
        pairs.append((image, mask))
    return pairs


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "a"
    synthesize(out, seed=0, workers=1, **SMALL)
    return out


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """300 train + 100 val images at 48 px: enough for label statistics."""
    out = tmp_path_factory.mktemp("syn") / "m"
    synthesize(out, seed=0, n_train=300, n_val=100, size=48, workers=2)
    return out


def test_same_seed_same_bytes_serial_and_parallel(small, tmp_path):
    parallel = tmp_path / "b"
    synthesize(parallel, seed=0, workers=2, **SMALL)
    a, b = file_hashes(small), file_hashes(parallel)
    assert len(a) == 2 * (40 + 20) + 2 + 1  # images, masks, two lists, manifest
    assert a == b


def test_different_seed_gives_different_data(small, tmp_path):
    other = tmp_path / "c"
    synthesize(other, seed=1, workers=1, **SMALL)
    a, c = file_hashes(small), file_hashes(other)
    assert a.keys() == c.keys()
    images = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != c[k] for k in images) == len(images)
    assert (
        json.loads((small / "manifest.json").read_text())["sha256_all"]
        != json.loads((other / "manifest.json").read_text())["sha256_all"]
    )


def test_layout_and_list_lines(small):
    for split, n in (("train", 40), ("val", 20)):
        lines = read_list(small, split)
        assert len(lines) == n
        for i, line in enumerate(lines):
            sid = f"{split}_{i:05d}"
            assert line == f"/JPEGImages/{sid}.jpg /SegmentationClassAug/{sid}.png"
            assert (small / "VOCdevkit/VOC2012/JPEGImages" / f"{sid}.jpg").is_file()
            assert (small / "SegmentationClassAug" / f"{sid}.png").is_file()


def test_images_are_rgb_jpegs(small):
    for path in sorted((small / "VOCdevkit/VOC2012/JPEGImages").iterdir()):
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
            im.load()  # decodes fully


def test_masks_are_voc_palette_pngs_with_ignore_borders(small):
    for path in sorted((small / "SegmentationClassAug").iterdir()):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "P" and im.size == (64, 64)
            palette = im.getpalette()
            mask = np.asarray(im)
        # VOC colour map: 1 -> dark red, 15 -> person pink, 255 -> the cream border colour.
        assert palette[3:6] == [128, 0, 0] and palette[45:48] == [192, 128, 128]
        assert palette[765:768] == [224, 224, 192]
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}
        assert 255 in values and values - {0, 255}, f"{path.name} has no labelled object"
        # Two different labels never touch: every boundary lies inside a band of 255.
        for a, b in ((mask[1:], mask[:-1]), (mask[:, 1:], mask[:, :-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), path.name
        # The band is thin: most of each object is labelled, not ignored.
        assert np.mean(mask == 255) < 0.25


def test_draw_sample_matches_written_mask(small):
    _, mask = synthetic.draw_sample(0, "val", 7, 64)
    written = np.asarray(Image.open(small / "SegmentationClassAug" / "val_00007.png"))
    np.testing.assert_array_equal(mask, written)


def test_every_class_in_both_splits_and_incremental_steps_have_data(medium):
    label_sets = {
        split: [set(np.unique(m).tolist()) - {0, 255} for _, m in load_split(medium, split)]
        for split in ("train", "val")
    }
    for split, sets in label_sets.items():
        present = set().union(*sets)
        assert present == set(range(1, 21)), f"{split} lacks {set(range(1, 21)) - present}"
        assert all(1 <= len(s) <= 4 for s in sets)
    train = label_sets["train"]
    task = get_task("synthetic", "15-1")
    old = set(task.base_classes())
    for step in range(1, task.num_steps):
        (new,) = task.new_classes(step)
        with_new = [s for s in train if new in s]
        assert len(with_new) >= 0.08 * len(train), f"class {new} in too few training images"
        # Background shift: old classes show up unlabelled in the new step's images.
        assert sum(bool(s & old) for s in with_new) >= 0.5 * len(with_new)
    # Some images show several classes, so objects can overlap.
    assert np.mean([len(s) >= 3 for s in train]) > 0.2


def test_class_mean_colours_are_distinct(medium):
    sums, counts = np.zeros((21, 3)), np.zeros(21)
    for image, mask in load_split(medium, "train"):
        keep = mask.ravel() != 255
        labels = mask.ravel()[keep]
        np.add.at(sums, labels, image.reshape(-1, 3)[keep].astype(float))
        counts += np.bincount(labels, minlength=21)
    means = sums / counts[:, None]
    dist = np.linalg.norm(means[:, None] - means[None, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert dist.min() > 20, np.unravel_index(dist.argmin(), dist.shape)


def test_manifest_records_lists_and_files(small):
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["size"] == 64
    assert manifest["counts"] == {"train": 40, "val": 20}
    hashes = file_hashes(small)
    for rel, digest in manifest["lists"].items():
        assert hashes[rel] == digest
    del hashes["manifest.json"]
    assert manifest["num_files"] == len(hashes)
    listing = "".join(f"{h}  {rel}\n" for rel, h in sorted(hashes.items()))
    assert manifest["sha256_all"] == hashlib.sha256(listing.encode()).hexdigest()
    assert not list(small.glob(".*tmp*"))


def test_same_parameters_is_a_noop(small):
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*") if p.is_file()}
    manifest = synthesize(small, seed=0, workers=1, **SMALL)
    assert manifest == json.loads((small / "manifest.json").read_text())
    assert before == {p: p.stat().st_mtime_ns for p in small.rglob("*") if p.is_file()}


def test_other_parameters_are_refused(small):
    with pytest.raises(SyntheticDatasetError) as err:
        synthesize(small, seed=3, workers=1, **SMALL)
    assert str(small) in str(err.value) and "manifest.json" in str(err.value)
    with pytest.raises(SyntheticDatasetError):
        synthesize(small, seed=0, workers=1, n_train=41, n_val=20, size=64)


def test_foreign_dataset_folder_is_refused(tmp_path):
    images = tmp_path / "VOCdevkit/VOC2012/JPEGImages"
    images.mkdir(parents=True)
    (images / "2007_000032.jpg").write_bytes(b"not ours")
    with pytest.raises(SyntheticDatasetError, match=r"2007_000032\.jpg"):
        synthesize(tmp_path, seed=0, workers=1, **SMALL)


def test_interrupted_run_is_completed_to_the_same_bytes(small, tmp_path):
    partial = tmp_path / "p"
    shutil.copytree(small, partial)
    (partial / "manifest.json").unlink()
    (partial / "SegmentationClassAug/train_00003.png").unlink()
    (partial / "VOCdevkit/VOC2012/JPEGImages/val_00001.jpg").write_bytes(b"truncated")
    synthesize(partial, seed=0, workers=1, **SMALL)
    assert file_hashes(partial) == file_hashes(small)


def test_bad_arguments_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="--size"):
        synthesize(tmp_path / "x", size=8)
    with pytest.raises(ValueError, match="--train"):
        synthesize(tmp_path / "x", n_train=0)


def test_command_line_helpers(tmp_path):
    parser = argparse.ArgumentParser()
    synthetic.add_arguments(parser)
    argv = ["--out", str(tmp_path / "cli"), "--seed", "0", "--train", "40", "--val", "20"]
    args = parser.parse_args([*argv, "--size", "64", "--workers", "1"])
    assert synthetic.run(args) == 0
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 40, "val": 20}
