"""Pascal-VOC-like files for the benches: 500x375 JPEGs and palette PNG masks in VOC's layout.

Masks hold background, one to three objects of classes 1..20 and a 255 (ignore) outline around
each object, like SegmentationClassAug; images are colour regions following the mask plus a
gradient and noise, so that JPEG sizes and decode times are those of photographs (~60-100 KB).

Large sets are made from ``n_distinct`` written files hard-linked (copied where links fail)
under the other names: the decoders do the same work per file, the disk holds only the distinct
files (the page cache holds them too, so the benches measure decoding, not disk reads).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lgkd_core.data.palettes import voc_palette

WIDTH, HEIGHT = 500, 375
ROOT_NAME = "PascalVOC2012"  # lgkd_core.data.sources: data_root / PascalVOC2012


def make_mask(rng: np.random.Generator, classes: list[int]) -> Image.Image:
    """A 'P' mask: background 0, one ellipse or polygon per class, 255 outlines (width 5)."""
    mask = Image.new("P", (WIDTH, HEIGHT), 0)
    mask.putpalette(voc_palette().reshape(-1).tolist())
    draw = ImageDraw.Draw(mask)
    for c in classes:
        cx, cy = rng.integers(60, WIDTH - 60), rng.integers(50, HEIGHT - 50)
        rx, ry = rng.integers(30, 160), rng.integers(30, 130)
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        if rng.random() < 0.5:
            draw.ellipse(box, fill=int(c), outline=255, width=5)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
            pts = [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]
            draw.polygon([(float(x), float(y)) for x, y in pts], fill=int(c), outline=255, width=5)
    return mask


def make_image(rng: np.random.Generator, mask: Image.Image) -> Image.Image:
    """RGB image: a colour per mask value, a gradient and Gaussian noise."""
    ids = np.asarray(mask)
    colours = rng.integers(0, 256, size=(256, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    grad = (xx / WIDTH * 60 + yy / HEIGHT * 40)[..., None]
    noise = rng.normal(0, 18, size=(HEIGHT, WIDTH, 3)).astype(np.float32)
    img = np.clip(colours[ids] * 0.7 + grad + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB")


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_voc_layout(
    data_root: Path, n_train: int, n_val: int, n_distinct: int = 24, seed: int = 0
) -> dict[str, list[str]]:
    """Write ``data_root/PascalVOC2012`` (images, SegmentationClassAug, list files).

    ``n_distinct`` distinct image/mask pairs are generated; image ``k`` is a link to pair
    ``k % n_distinct``. Pair ``k`` holds class ``k % 20 + 1`` plus up to two random ones, so
    every class occurs. Returns the ids per split (``train``, ``val``).
    """
    rng = np.random.default_rng(seed)
    root = Path(data_root) / ROOT_NAME
    img_dir = root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    mask_dir = root / "SegmentationClassAug"
    proto_dir = root / "distinct"
    for d in (img_dir, mask_dir, root / "list", proto_dir):
        d.mkdir(parents=True, exist_ok=True)
    distinct = min(n_distinct, n_train + n_val)
    for k in range(distinct):
        extra = rng.choice(np.arange(1, 21), size=rng.integers(0, 3), replace=False).tolist()
        classes = list(dict.fromkeys([k % 20 + 1, *extra]))
        mask = make_mask(rng, classes)
        mask.save(proto_dir / f"{k}.png", optimize=False)
        make_image(rng, mask).save(proto_dir / f"{k}.jpg", quality=90)
    ids = {
        "train": [f"t{k:06d}" for k in range(n_train)],
        "val": [f"v{k:06d}" for k in range(n_val)],
    }
    k = 0
    for split, names in ids.items():
        lines = []
        for name in names:
            _place(proto_dir / f"{k % distinct}.jpg", img_dir / f"{name}.jpg")
            _place(proto_dir / f"{k % distinct}.png", mask_dir / f"{name}.png")
            lines.append(f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png\n")
            k += 1
        list_name = "train_aug.txt" if split == "train" else "val.txt"
        (root / "list" / list_name).write_text("".join(lines))
    return ids
