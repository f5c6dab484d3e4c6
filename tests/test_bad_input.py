"""Bad input through the command line: one clear line naming the file and the fix, exit code 2,
no traceback, and no file that existed before the command is changed or removed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lgkd_core.engine.checkpoint import atomic_torch_save, load_model_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = [
    "--epochs", "1", "--batch-size", "4", "--crop-size", "64", "--output-stride", "8",
    "--backbone", "resnet18_w0.25", "--head-channels", "32", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def clean_root(synthetic_data) -> Path:
    return synthetic_data(seed=2, n_train=40, n_val=8)  # copied by `work` before any change


@pytest.fixture
def work(clean_root, tmp_path) -> Path:
    """A private copy of the data (``work/data``) with earlier results beside it."""
    shutil.copytree(clean_root, tmp_path / "data")
    state = tmp_path / "out" / "state"
    state.mkdir(parents=True)
    (state / "ckpt-000000005.pt").write_bytes(b"an earlier checkpoint of this step")
    return tmp_path


@pytest.fixture(scope="module")
def teacher(clean_root, tmp_path_factory) -> Path:
    """A real step-0 model of synthetic 15-5 (one short epoch)."""
    out = tmp_path_factory.mktemp("teacher")
    args = [*_train_args(clean_root, "--workers", "0"), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "lgkd_core", *args], env=ENV, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "model.pt"


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _fails(cwd: Path, *args: str, keep: list[Path] = ()) -> str:
    """Run the CLI, expect exit code 2 and no traceback; nothing under ``cwd`` or ``keep`` that
    existed before may change. Returns stderr."""
    roots = [cwd, *keep]
    before = [_snapshot(r) for r in roots]
    proc = subprocess.run(
        [sys.executable, "-m", "lgkd_core", *args],
        cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for root, old in zip(roots, before, strict=True):
        new = _snapshot(root)
        changed = [k for k, v in old.items() if new.get(k) != v]
        assert not changed, f"files changed or removed by a failed command: {changed}"
    return proc.stderr


def _train_args(data_root: Path, *extra: str, step: int = 0, task: str = "15-5") -> list[str]:
    return [
        "train", "--dataset", "synthetic", "--task", task, "--step", str(step),
        "--method", "LGKD", "--data-root", str(data_root), "--out", "out", *TINY, *extra,
    ]  # fmt: skip


def _prepare_args(data_root: Path, dataset: str = "synthetic") -> list[str]:
    return [
        "prepare", "--dataset", dataset, "--task", "15-5", "--data-root", str(data_root),
        "--out-dir", "splits", "--workers", "1",
    ]  # fmt: skip


def _prepared(work: Path) -> Path:
    """Split lists prepared from the intact data (the earlier, good result)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lgkd_core", *_prepare_args(work / "data")],
        cwd=work, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "splits" / "step1-train.txt").is_file()
    return work / "splits"


def _first_train_files(data: Path) -> tuple[Path, Path]:
    """(image, mask) of the first image of the synthetic training list (used at step 0)."""
    root = data / "synthetic"
    line = (root / "list" / "train_aug.txt").read_text().splitlines()[0]
    image_rel, mask_rel = (p.lstrip("/") for p in line.split())
    return root / "VOCdevkit/VOC2012" / image_rel, root / mask_rel


# -- data root ---------------------------------------------------------------------------------
def test_missing_data_root_names_layout_and_command(work):
    missing = work / "nowhere"
    err = _fails(work, *_train_args(missing))
    assert f"{missing / 'synthetic'} does not exist" in err
    assert "Expected layout under <root>" in err and "VOCdevkit/VOC2012/JPEGImages/<id>.jpg" in err
    assert f"Create it with: python -m lgkd_core synthesize --out {missing / 'synthetic'}" in err
    assert not (work / "out" / "model.pt").exists()


def test_misplaced_data_root_names_layout_and_command(work):
    # A common slip: the dataset folder itself instead of the folder that holds it.
    inner = work / "data" / "synthetic"
    _prepared(work)
    err = _fails(work, *_prepare_args(inner))
    assert f"{inner / 'synthetic'} does not exist" in err
    assert f"python -m lgkd_core synthesize --out {inner / 'synthetic'}" in err
    err = _fails(work, *_prepare_args(work / "data", dataset="voc"))
    assert f"{work / 'data' / 'PascalVOC2012'} does not exist" in err
    assert f"python -m lgkd_core download --dataset voc --data-root {work / 'data'}" in err


# -- image and mask files --------------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_jpeg_in_training_set_is_named(work, workers):
    image, _ = _first_train_files(work / "data")
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    err = _fails(work, *_train_args(work / "data", "--workers", str(workers)))
    last = err.strip().splitlines()[-1]
    assert f"cannot read image {image}" in last and "replace the file" in last, err[-3000:]
    if workers:
        assert "(in DataLoader worker process" in last
    assert not (work / "out" / "model.pt").exists()


def test_mask_with_ids_outside_the_dataset_is_named(work):
    splits = _prepared(work)
    _, mask_path = _first_train_files(work / "data")
    with Image.open(mask_path) as img:
        palette, mask = img.getpalette(), np.array(img)
    mask[:4, :4] = 30  # VOC has 0..20 and 255
    bad = Image.fromarray(mask, mode="P")
    bad.putpalette(palette)
    bad.save(mask_path)
    expected = f"mask {mask_path} contains values [30] that are not class ids"
    err = _fails(work, *_prepare_args(work / "data"))
    assert expected in err and "0..20, 255 = ignore" in err
    assert (splits / "step0-train.txt").is_file()
    # Training without prepared lists reads the masks itself and stops the same way.
    err = _fails(work, *_train_args(work / "data", "--workers", "0"))
    assert expected in err


def test_image_and_mask_of_different_sizes_are_found_by_prepare(work):
    splits = _prepared(work)
    image, mask_path = _first_train_files(work / "data")
    with Image.open(mask_path) as img:
        img.crop((0, 0, 64, 48)).save(mask_path)
    err = _fails(work, *_prepare_args(work / "data"))
    assert f"image {image} is 64x64 but its mask {mask_path} is 64x48" in err
    assert (splits / "step0-train.txt").is_file()


# -- teacher checkpoints ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "step", "needs"),
    [("19-1", 1, "classes [0, 1,"), ("15-1", 2, "needs classes [0, 1,")],
    ids=["other-task", "other-step"],
)
def test_teacher_with_another_class_layout_is_refused(work, teacher, task, step, needs):
    args = _train_args(work / "data", "--teacher", str(teacher), task=task, step=step)
    err = _fails(work, *args, keep=[teacher.parent])
    assert f"{teacher} was trained for synthetic/15-5 step 0" in err
    assert f"synthetic/{task} step {step - 1} needs classes" in err and needs in err
    assert not (work / "out" / "model.pt").exists()


def test_teacher_of_another_architecture_is_refused(work, teacher):
    # A project model file: the student (here a wider backbone) must match the teacher.
    args = _train_args(work / "data", "--teacher", str(teacher), step=1)
    args[args.index("resnet18_w0.25")] = "resnet18_w0.5"
    err = _fails(work, *args, keep=[teacher.parent])
    assert f"{teacher} does not fit the model architecture" in err
    assert "check backbone/output_stride/head_channels" in err
    # A reference-format checkpoint (no metadata, DDP 'module.' keys) of another backbone.
    state = load_model_file(teacher)["model_state"]
    foreign = work / "foreign.pth"
    atomic_torch_save({"model_state": {f"module.{k}": v for k, v in state.items()}}, foreign)
    args = _train_args(work / "data", "--teacher", str(foreign), "--head-channels", "64", step=1)
    err = _fails(work, *args)
    assert f"{foreign} does not fit the model architecture" in err and "shape mismatches" in err
    assert torch.equal(
        load_model_file(foreign)["model_state"]["cls.0.weight"], state["cls.0.weight"]
    )


# -- options -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--dataset", "vocc", "valid datasets: ade, synthetic, voc"),
        ("--task", "15-6", "valid tasks: 10-1, 15-1, 15-5,"),
        ("--method", "MiBB", "valid methods: FT, Joint, LwF, LwF-MC, ILT, EWC"),
        ("--backbone", "resnet19", "choose one of resnet101, resnet50,"),
        ("--set", "bogus_key=1", "valid keys: ce_type,"),
    ],
)
def test_unknown_values_list_the_allowed_ones(work, option, value, allowed):
    err = _fails(work, *_train_args(work / "data", option, value))
    assert repr(value.split("=")[0]) in err and allowed in err
