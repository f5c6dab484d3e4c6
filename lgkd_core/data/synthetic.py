"""The embedded default dataset: procedurally drawn objects in Pascal VOC's on-disk layout.

``synthesize(out, seed)`` writes::

    <out>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg   RGB JPEG (quality 90), (size, size)
    <out>/SegmentationClassAug/<id>.png           palette PNG, VOC colours, values 0..20 and 255
    <out>/list/{train_aug,val}.txt    lines "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png"
    <out>/manifest.json                           written last, atomically (completion marker)

Every image has 1-4 objects of distinct classes (``tasks.SYNTHETIC_CLASSES``) on a textured
background; later objects may partly hide earlier ones, and a 2 px band along every label
boundary is 255 (ignore) as in VOC. Each image is drawn from its own ``SeedSequence(seed,
spawn_key=(split, index))``, so the bytes do not depend on the number of worker processes.
Image ``i`` of a split always shows class ``i % 20 + 1`` on top, so every class appears in both
splits once a split has 20 images; further classes are drawn uniformly.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import multiprocessing
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lgkd_core.data.palettes import voc_palette
from lgkd_core.io import atomic_write_text
from lgkd_core.tasks import SYNTHETIC_CLASSES
from lgkd_core.workers import num_workers

log = logging.getLogger(__name__)

# Bump when the drawing changes: a manifest of another version is a different dataset.
GENERATOR_VERSION = 1
NUM_OBJECT_CLASSES = len(SYNTHETIC_CLASSES) - 1  # 20
IGNORE = 255
JPEG_QUALITY = 90
SPLITS = ("train", "val")
_SPLIT_INDEX = {"train": 0, "val": 1}
_LIST_NAME = {"train": "train_aug.txt", "val": "val.txt"}
IMAGE_DIR = Path("VOCdevkit/VOC2012/JPEGImages")
MASK_DIR = Path("SegmentationClassAug")
LIST_DIR = Path("list")
MANIFEST = "manifest.json"
_ID_RE = re.compile(r"^(train|val)_\d{5,}\.(jpg|png)$")

# Number of objects per image: 1..4 with these probabilities (mean 2.5).
_NUM_OBJECTS_P = np.array([0.2, 0.3, 0.3, 0.2])
_MIN_SIDE, _MAX_SIDE = 0.15, 0.45  # object extent as a fraction of the image side


class SyntheticDatasetError(ValueError):
    """The output folder holds something ``synthesize`` must not overwrite (a bad ``--out``)."""


_PALETTE = voc_palette().reshape(-1).tolist()  # flat, as PIL.Image.putpalette takes it


# -- class appearance ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Look:
    shape: str  # outline, see _shape_mask
    color: tuple[int, int, int]  # main colour
    pattern: str = "solid"  # solid | hstripes | vstripes | checker | dots | grid
    color2: tuple[int, int, int] = (0, 0, 0)  # second colour of a pattern
    rotate: float = 180.0  # maximum absolute rotation in degrees


_LOOKS: dict[str, _Look] = {
    "red_disc": _Look("disc", (215, 30, 30), rotate=0),
    "green_square": _Look("square", (30, 165, 45), rotate=15),
    "blue_triangle": _Look("triangle", (35, 60, 225)),
    "yellow_ring": _Look("ring", (245, 225, 40), rotate=0),
    "cyan_cross": _Look("xcross", (40, 225, 225), rotate=10),
    "magenta_diamond": _Look("diamond", (220, 40, 210), rotate=10),
    "orange_hstripes": _Look("square", (255, 135, 0), "hstripes", (255, 235, 200), rotate=8),
    "purple_vstripes": _Look("square", (120, 35, 165), "vstripes", (20, 10, 30), rotate=8),
    "white_checker": _Look("square", (250, 250, 250), "checker", (90, 90, 90), rotate=20),
    "gray_dots": _Look("disc", (115, 115, 115), "dots", (40, 40, 40), rotate=0),
    "lime_star": _Look("star", (165, 245, 40)),
    "teal_hexagon": _Look("hexagon", (0, 130, 125)),
    "pink_ellipse": _Look("ellipse", (255, 150, 195)),
    "brown_frame": _Look("frame", (135, 80, 30), rotate=20),
    "navy_plus": _Look("plus", (20, 25, 115), rotate=10),
    "olive_bar": _Look("bar", (125, 130, 10)),
    "maroon_half_disc": _Look("half_disc", (120, 0, 10)),
    "coral_pentagon": _Look("pentagon", (255, 115, 80)),
    "gold_grid": _Look("square", (235, 185, 20), "grid", (70, 45, 0), rotate=20),
    "sky_arrow": _Look("arrow", (125, 195, 245)),
}
_CLASS_LOOKS: tuple[_Look, ...] = tuple(_LOOKS[name] for name in SYNTHETIC_CLASSES[1:])


def _regular(n: int, start: float = -math.pi / 2) -> np.ndarray:
    """Vertices (n, 2) of a regular n-gon of circumradius 1."""
    a = start + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _star() -> np.ndarray:
    outer = _regular(5)
    inner = 0.42 * _regular(5, start=-math.pi / 2 + math.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


def _plus(w: float) -> np.ndarray:
    """Vertices (12, 2) of an upright plus of arm half-width ``w`` and half extent 1."""
    arm = np.array([[-w, -1], [w, -1], [w, -w]])  # the top arm and the corner after it
    quarter = np.array([[0.0, 1.0], [-1.0, 0.0]])  # (x, y) -> (-y, x): a quarter turn
    return np.concatenate([arm @ np.linalg.matrix_power(quarter, k) for k in range(4)])


# Polygon outlines in units of the half extent (x right, y down), before rotation.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.85,
    "triangle": _regular(3) * np.array([1.1, 1.0]) + np.array([0, 0.2]),
    "diamond": np.array([[0, -1], [0.65, 0], [0, 1], [-0.65, 0]], float),
    "star": _star(),
    "hexagon": _regular(6, start=0.0),
    "pentagon": _regular(5),
    "bar": np.array([[-1, -0.3], [1, -0.3], [1, 0.3], [-1, 0.3]], float),
    "arrow": np.array(
        [[-1, -0.2], [0.2, -0.2], [0.2, -0.55], [1, 0], [0.2, 0.55], [0.2, 0.2], [-1, 0.2]], float
    ),
    "plus": _plus(0.3),
}
_POLYGONS["xcross"] = _POLYGONS["plus"] @ np.array(
    [
        [math.cos(math.pi / 4), -math.sin(math.pi / 4)],
        [math.sin(math.pi / 4), math.cos(math.pi / 4)],
    ]
)


def _polygon_mask(size: int, verts: np.ndarray) -> np.ndarray:
    """Filled polygon ``verts`` (n, 2) in pixel coordinates -> bool (size, size)."""
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in verts], fill=1)
    return np.asarray(canvas, dtype=bool)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, size: int, place) -> np.ndarray:
    """bool (size, size) of one outline; ``u, v``: object-frame coordinates / half extent."""
    r2 = u * u + v * v
    if shape == "disc":
        return r2 <= 1.0
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1.0
    if shape == "half_disc":
        return (r2 <= 1.0) & (v <= 0.15)
    if shape == "frame":
        m = np.maximum(np.abs(u), np.abs(v))
        return (m <= 0.9) & (m >= 0.55)
    cx, cy, half, angle = place
    c, s = math.cos(angle), math.sin(angle)
    verts = _POLYGONS[shape] @ np.array([[c, s], [-s, c]]) * half + np.array([cx, cy])
    return _polygon_mask(size, verts)


def _pattern(look: _Look, u: np.ndarray, v: np.ndarray, half: float) -> np.ndarray:
    """bool (size, size): True where the second colour shows; ``u, v`` in units of ``half``."""
    period = max(3.0, 0.4 * half) / half  # about 5 periods across the object, >= 3 px
    if look.pattern == "hstripes":
        return np.floor(v / period * 2) % 2 == 1
    if look.pattern == "vstripes":
        return np.floor(u / period * 2) % 2 == 1
    if look.pattern == "checker":
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 1
    if look.pattern == "dots":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return du * du + dv * dv <= 0.3**2
    if look.pattern == "grid":
        width = max(1.2 / half, 0.25 * period)
        return ((u % period) < width) | ((v % period) < width)
    return np.zeros(u.shape, dtype=bool)


# -- one image -----------------------------------------------------------------------------------
def _upsample(rng: np.random.Generator, grid: int, size: int, scale: float) -> np.ndarray:
    """Smooth RGB noise (size, size, 3) float32: a random ``grid``² field resized bicubically."""
    low = rng.normal(0.0, scale, (grid, grid, 3)).astype(np.float32)
    chans = [
        np.asarray(Image.fromarray(low[..., k], mode="F").resize((size, size), Image.BICUBIC))
        for k in range(3)
    ]
    return np.stack(chans, axis=-1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted, textured background: float32 (size, size, 3) in 0..255."""
    base = rng.uniform(70, 170) + rng.normal(0, 18, 3)
    img = base + _upsample(rng, 4, size, 30.0) + _upsample(rng, max(4, size // 6), size, 10.0)
    return img.astype(np.float32)


def _jitter(rng: np.random.Generator, color: tuple[int, int, int]) -> np.ndarray:
    return np.asarray(color, np.float32) * rng.uniform(0.88, 1.12) + rng.normal(0, 8, 3)


def _choose_classes(rng: np.random.Generator, index: int) -> list[int]:
    """Classes of image ``index``, in drawing order; the anchor ``index % 20 + 1`` comes last."""
    anchor = index % NUM_OBJECT_CLASSES + 1
    k = int(rng.choice(len(_NUM_OBJECTS_P), p=_NUM_OBJECTS_P)) + 1
    others = [c for c in range(1, NUM_OBJECT_CLASSES + 1) if c != anchor]
    extra = rng.choice(others, size=k - 1, replace=False).tolist()
    return [int(c) for c in extra] + [anchor]


def _boundary(label: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels with a 4-neighbour of another label (a 2 px band along each edge)."""
    band = np.zeros(label.shape, dtype=bool)
    dy = label[1:, :] != label[:-1, :]
    dx = label[:, 1:] != label[:, :-1]
    band[1:, :] |= dy
    band[:-1, :] |= dy
    band[:, 1:] |= dx
    band[:, :-1] |= dx
    return band


def draw_sample(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask: ``(image uint8 (size, size, 3), mask uint8 (size, size))``.

    A pure function of its arguments (its own ``SeedSequence(seed, spawn_key=(split, index))``).
    """
    ss = np.random.SeedSequence(seed, spawn_key=(_SPLIT_INDEX[split], index))
    rng = np.random.Generator(np.random.PCG64(ss))
    img = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    for cls in _choose_classes(rng, index):
        look = _CLASS_LOOKS[cls - 1]
        mask, frame = _place(rng, look, label, xs, ys, size)
        u, v, half = frame
        fill = np.empty((size, size, 3), np.float32)
        fill[:] = _jitter(rng, look.color)
        if look.pattern != "solid":
            fill[_pattern(look, u, v, half)] = _jitter(rng, look.color2)
        img[mask] = fill[mask]
        label[mask] = cls

    img += rng.normal(0, 6, img.shape).astype(np.float32)
    label[_boundary(label)] = IGNORE
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), label


def _place(rng, look: _Look, label: np.ndarray, xs, ys, size: int, tries: int = 8):
    """Position one object so that it hides at most half of any earlier object, if it can.

    Returns ``(mask bool (size, size), (u, v, half))`` with ``u, v`` the object frame.
    """
    visible = [int(np.count_nonzero(label == c)) for c in range(NUM_OBJECT_CLASSES + 1)]
    best, best_cover = None, math.inf
    for _ in range(tries):
        half = 0.5 * size * rng.uniform(_MIN_SIDE, _MAX_SIDE)
        cx, cy = rng.uniform(half, size - half, 2)
        angle = math.radians(rng.uniform(-look.rotate, look.rotate))
        c, s = math.cos(angle), math.sin(angle)
        u = ((xs - cx) * c + (ys - cy) * s) / half
        v = (-(xs - cx) * s + (ys - cy) * c) / half
        mask = _shape_mask(look.shape, u, v, size, (cx, cy, half, angle))
        hidden = np.bincount(label[mask], minlength=NUM_OBJECT_CLASSES + 1)
        cover = max(
            (hidden[k] / visible[k] for k in range(1, len(visible)) if visible[k]), default=0
        )
        if cover < best_cover:
            best, best_cover = (mask, (u, v, half)), cover
        if cover <= 0.5:
            break
    return best


def _encode(image: np.ndarray, mask: np.ndarray) -> tuple[bytes, bytes]:
    jpg = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(jpg, format="JPEG", quality=JPEG_QUALITY)
    png = io.BytesIO()
    pal = Image.fromarray(mask, mode="L")
    pal.putpalette(_PALETTE)  # an "L" image with a palette becomes mode "P"
    pal.save(png, format="PNG")
    return jpg.getvalue(), png.getvalue()


def sample_id(split: str, index: int) -> str:
    return f"{split}_{index:05d}"


def _write_range(out: str, seed: int, split: str, start: int, stop: int, size: int) -> list:
    """Draw and write images ``start..stop-1`` of ``split``; returns ``[(relpath, sha256)]``."""
    root = Path(out)
    written = []
    for index in range(start, stop):
        name = sample_id(split, index)
        jpg, png = _encode(*draw_sample(seed, split, index, size))
        for rel, data in ((IMAGE_DIR / f"{name}.jpg", jpg), (MASK_DIR / f"{name}.png", png)):
            (root / rel).write_bytes(data)
            written.append((rel.as_posix(), hashlib.sha256(data).hexdigest()))
    return written


# -- the dataset ---------------------------------------------------------------------------------
def _params(seed: int, n_train: int, n_val: int, size: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "counts": {"train": n_train, "val": n_val},
        "size": size,
    }


def _check_out(out: Path, params: dict) -> dict | None:
    """The existing manifest if ``out`` already holds this dataset; raise if it holds another."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            have = json.loads(manifest.read_text())
        except (OSError, ValueError) as err:
            raise SyntheticDatasetError(
                f"{manifest} is unreadable ({err}); delete the folder {out} and generate again"
            ) from err
        if {k: have.get(k) for k in params} == params:
            return have
        raise SyntheticDatasetError(
            f"{out} already holds a synthetic dataset with other parameters "
            f"({ {k: have.get(k) for k in params} } in {manifest}, asked for {params}); "
            f"choose another --out or delete {out} first"
        )
    images = out / IMAGE_DIR
    if images.is_dir():
        foreign = [p.name for p in images.iterdir() if not _ID_RE.match(p.name)]
        if foreign:
            raise SyntheticDatasetError(
                f"{images} holds files that synthesize did not write (e.g. {foreign[0]}); "
                f"it looks like another dataset: choose an empty --out"
            )
    return None


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    step = max(1, math.ceil(n / parts))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def synthesize(
    out: Path,
    seed: int = 0,
    n_train: int = 1000,
    n_val: int = 300,
    size: int = 96,
    workers: int = 0,
) -> dict:
    """Generate the embedded dataset into ``out`` (VOC layout) and return its manifest.

    Same arguments -> the same bytes in every file, whatever ``workers`` (0: one per core).
    A no-op when ``out`` already holds this dataset; raises ``SyntheticDatasetError`` when it
    holds a different one.
    """
    out = Path(out)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"--train and --val must be >= 1, got {n_train} and {n_val}")
    if size < 32:
        raise ValueError(f"--size must be >= 32 pixels, got {size}")
    params = _params(seed, n_train, n_val, size)
    existing = _check_out(out, params)
    if existing is not None:
        log.info("%s already holds this synthetic dataset; nothing to do", out)
        return existing

    start = time.perf_counter()
    for sub in (IMAGE_DIR, MASK_DIR, LIST_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val}
    nproc = num_workers(workers)
    jobs = [
        (str(out), seed, split, a, b, size)
        for split in SPLITS
        for a, b in _chunks(counts[split], 4 * nproc)
    ]
    if nproc == 1:
        results = [_write_range(*job) for job in jobs]
    else:
        # spawn, not fork: the caller may hold threads (torch) that fork would copy badly.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=nproc, mp_context=ctx) as pool:
            results = list(pool.map(_write_range, *zip(*jobs, strict=True)))
    hashes = dict(pair for chunk in results for pair in chunk)

    list_sha = {}
    for split in SPLITS:
        ids = [sample_id(split, i) for i in range(counts[split])]
        lines = "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids)
        rel = (LIST_DIR / _LIST_NAME[split]).as_posix()
        atomic_write_text(out / rel, lines)
        hashes[rel] = list_sha[rel] = hashlib.sha256(lines.encode()).hexdigest()

    everything = hashlib.sha256(
        "".join(f"{h}  {rel}\n" for rel, h in sorted(hashes.items())).encode()
    ).hexdigest()
    manifest = {
        **params,
        "classes": list(SYNTHETIC_CLASSES),
        "lists": list_sha,
        "num_files": len(hashes),
        "sha256_all": everything,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info(
        "synthesized %d + %d images (%d px) into %s in %.1f s with %d process(es)",
        n_train, n_val, size, out, time.perf_counter() - start, nproc,
    )  # fmt: skip
    return manifest


# -- command line (wired into ``python -m lgkd_core synthesize``) --------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=1000, help="number of training images")
    parser.add_argument("--val", type=int, default=300, help="number of validation images")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")


def run(args: argparse.Namespace) -> int:
    try:
        synthesize(args.out, args.seed, args.train, args.val, args.size, workers=args.workers)
    except SyntheticDatasetError as err:
        raise SystemExit(f"synthesize: {err}") from err
    return 0
