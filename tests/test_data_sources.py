"""Dataset layouts, file readers and the segmentation dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lgkd_core.data.dataset import SegmentationDataset
from lgkd_core.data.labels import eval_lut, train_lut
from lgkd_core.data.sources import (
    DataFileError,
    DataLayoutError,
    open_source,
    read_image,
    read_mask,
)
from lgkd_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from lgkd_core.tasks import get_task


def _palette_png(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="L")
    # palette colours deliberately unrelated to the indices
    img.putpalette([(i * 91 + 17) % 256 for i in range(768)])
    img.save(path)


def _voc(root: Path, train_ids: list[str], val_ids: list[str], size=(12, 10)) -> None:
    (root / "VOCdevkit/VOC2012/JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "list").mkdir()
    w, h = size
    for k, image_id in enumerate(train_ids + val_ids):
        color = np.array([20 * k, 100, 200], dtype=np.uint8)
        Image.fromarray(np.broadcast_to(color, (h, w, 3)).copy()).save(
            root / f"VOCdevkit/VOC2012/JPEGImages/{image_id}.jpg", quality=95
        )
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[: h // 2] = 16
        mask[:, -2:] = 255
        mask[-1, 0] = 5
        _palette_png(root / f"SegmentationClassAug/{image_id}.png", mask)
    for name, ids in (("train_aug", train_ids), ("val", val_ids)):
        lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids)
        (root / f"list/{name}.txt").write_text(lines)


# -- layouts ---------------------------------------------------------------------------------
def test_missing_roots_name_path_layout_and_command(tmp_path):
    with pytest.raises(DataLayoutError) as e:
        open_source("synthetic", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "synthetic") in msg
    assert "SegmentationClassAug" in msg and "list/train_aug.txt" in msg
    assert f"python -m lgkd_core synthesize --out {tmp_path / 'synthetic'}" in msg
    for dataset, folder in (("voc", "PascalVOC2012"), ("ade", "ADEChallengeData2016")):
        with pytest.raises(DataLayoutError) as e:
            open_source(dataset, tmp_path)
        msg = str(e.value)
        assert str(tmp_path / folder) in msg
        assert f"python -m lgkd_core download --dataset {dataset} --data-root {tmp_path}" in msg
    assert "annotations/training" in msg  # ADE's layout is shown for ADE
    assert isinstance(e.value, ValueError)


def test_missing_list_file_is_named(tmp_path):
    root = tmp_path / "PascalVOC2012"
    _voc(root, ["a"], ["b"])
    (root / "list/val.txt").unlink()
    source = open_source("voc", tmp_path)
    assert source.ids("train") == ["a"]
    with pytest.raises(DataLayoutError, match=r"list/val\.txt does not exist"):
        source.ids("val")
    with pytest.raises(ValueError, match="valid splits"):
        source.ids("test")


def test_voc_ids_keep_list_order_and_paths(tmp_path):
    root = tmp_path / "PascalVOC2012"
    _voc(root, ["2007_000032", "2007_000001", "2008_000005"], ["2007_000033"])
    source = open_source("voc", tmp_path)
    assert source.ids("train") == ["2007_000032", "2007_000001", "2008_000005"]
    assert source.ids("val") == ["2007_000033"]
    assert source.image_path("train", "2007_000001") == (
        root / "VOCdevkit/VOC2012/JPEGImages/2007_000001.jpg"
    )
    assert source.mask_path("val", "2007_000033") == root / "SegmentationClassAug/2007_000033.png"
    with pytest.raises(KeyError, match="nope"):
        source.image_path("train", "nope")


def test_ade_ids_are_sorted_stems(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
    for stem in ("ADE_train_00000002", "ADE_train_00000001", "ADE_train_00000010"):
        (root / "images/training" / f"{stem}.jpg").write_bytes(b"")
    (root / "images/training/notes.txt").write_text("not an image")
    source = open_source("ade", tmp_path)
    assert source.ids("train") == ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000010"]
    assert source.ids("val") == []
    assert source.mask_path("train", "ADE_train_00000002") == (
        root / "annotations/training/ADE_train_00000002.png"
    )


def test_synthetic_dataset_opens_with_the_voc_reader(tmp_path):
    from lgkd_core.data.synthetic import synthesize

    synthesize(tmp_path / "synthetic", 0, 6, 4, 32, workers=1)
    source = open_source("synthetic", tmp_path)
    assert len(source.ids("train")) == 6 and len(source.ids("val")) == 4
    image = read_image(source.image_path("train", source.ids("train")[0]))
    mask = read_mask(source.mask_path("train", source.ids("train")[0]))
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)


# -- readers ---------------------------------------------------------------------------------
def test_read_mask_returns_palette_indices(tmp_path):
    mask = np.array([[0, 1, 20], [255, 7, 7]], dtype=np.uint8)
    _palette_png(tmp_path / "m.png", mask)
    assert Image.open(tmp_path / "m.png").mode == "P"
    got = read_mask(tmp_path / "m.png")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, mask)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataFileError, match=r"rgb\.png.*'RGB'"):
        read_mask(tmp_path / "rgb.png")


def test_read_image_jpeg_and_png_agree_with_pil(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    got = read_image(tmp_path / "x.png")
    assert got.dtype == torch.uint8 and got.shape == (3, 9, 13)
    np.testing.assert_array_equal(got.permute(1, 2, 0).numpy(), arr)
    Image.fromarray(arr).save(tmp_path / "x.jpg", quality=95)
    pil = np.asarray(Image.open(tmp_path / "x.jpg").convert("RGB")).astype(int)
    jpg = read_image(tmp_path / "x.jpg").permute(1, 2, 0).numpy().astype(int)
    assert np.abs(jpg - pil).max() <= 8  # two JPEG decoders, same file
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.jpg")
    assert read_image(tmp_path / "grey.jpg").shape == (3, 9, 13)


def test_truncated_files_raise_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"cut\.jpg"):
        read_image(tmp_path / "cut.jpg")
    _palette_png(tmp_path / "m.png", rng.integers(0, 21, (64, 64)))
    data = (tmp_path / "m.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"cut\.png"):
        read_mask(tmp_path / "cut.png")


# -- dataset ---------------------------------------------------------------------------------
def test_dataset_items_apply_the_lut_once(tmp_path):
    root = tmp_path / "PascalVOC2012"
    _voc(root, ["a", "b"], ["c"])
    source = open_source("voc", tmp_path)
    task = get_task("voc", "15-1")
    raw = read_mask(source.mask_path("train", "b"))
    ds = SegmentationDataset(source, "train", ["b"], train_lut(task, 1), eval_transform(None))
    image, mask = ds[0]
    assert len(ds) == 1
    assert image.dtype == torch.float32 and image.shape == (3, 10, 12)
    assert mask.dtype == torch.int64 and mask.shape == (10, 12)
    assert type(image) is torch.Tensor and type(mask) is torch.Tensor
    expected = np.where(raw == 16, 16, np.where(raw == 255, 255, 0))  # 5 is old -> 0
    np.testing.assert_array_equal(mask.numpy(), expected)
    # normalised: undo and compare with the decoded JPEG
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    restored = (image * std + mean) * 255
    assert torch.allclose(restored, read_image(source.image_path("train", "b")).float(), atol=0.01)
    ev = SegmentationDataset(source, "val", ["c"], eval_lut(task, 1), eval_transform(8))
    image, mask = ev[0]
    assert image.shape == (3, 8, 8) and set(mask.unique().tolist()) <= {0, 5, 16, 255}


def test_dataset_refuses_size_mismatch(tmp_path):
    root = tmp_path / "PascalVOC2012"
    _voc(root, ["a"], ["c"])
    _palette_png(root / "SegmentationClassAug/a.png", np.zeros((9, 12), np.uint8))
    ds = SegmentationDataset(
        open_source("voc", tmp_path), "train", ["a"], np.arange(256), eval_transform(None)
    )
    with pytest.raises(DataFileError, match=r"a\.jpg.*a\.png"):
        ds[0]
