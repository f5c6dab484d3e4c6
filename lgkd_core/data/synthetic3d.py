"""A synthetic indoor point-cloud dataset in the block layout of ``prepare-points``.

``synthesize3d(out, seed)`` draws rooms (a floor, four walls, and furniture made of boxes,
thin slabs, cylinders and spheres), samples points on their surfaces, and writes what the
ScanNet / S3DIS conversion writes:

- ``OUT/blocks/<scene>_block_<i>.npy``: one 1 m x 1 m x-y block, (n, 7) float32
  ``[x, y, z, r, g, b, label]`` (xyz in metres with the scene's minimum at the origin, rgb
  0-255, label an index of ``SYNTHETIC3D_CLASSES``), cut by ``lgkd_core.data.points.blocks``;
- ``OUT/class2blocks.json``: {class index: [block names]} for the blocks holding more than
  max(5 % of the block's points, 100) points of the class;
- ``OUT/manifest.json``: dataset, settings, classes, counts, scenes and the train/val split.

Every room holds every furniture class once (chairs up to three times), so every class is in
both splits. Each class has its own shape and colour; positions get Gaussian noise (5 mm) and
colours per-object tint and per-point jitter, so a DGCNN separates the classes from geometry
and colour within minutes on a CPU. Room ``i`` of a split is drawn from its own
``SeedSequence(seed, spawn_key=(split, i))``: the same seed gives the same bytes, and adding
rooms leaves the earlier ones unchanged.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lgkd_core import __version__
from lgkd_core.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

SYNTHETIC3D_CLASSES: tuple[str, ...] = (
    "floor", "wall", "table", "chair", "bed", "sofa", "lamp", "cabinet", "shelf", "plant",
)  # fmt: skip
_C = {name: i for i, name in enumerate(SYNTHETIC3D_CLASSES)}

# Bump when the drawing changes: a manifest of another version is a different dataset.
GENERATOR_VERSION = 1
SPLITS = ("train", "val")
_SPLIT_INDEX = {"train": 0, "val": 1}
BLOCK_SIZE = 1.0
# Smaller than the protocol's 1000: at the default density a block at a room's edge may hold
# only a strip of floor and wall.
MIN_POINTS = 100
BLOCK_FORMAT = "(n, 7) float32 [x, y, z, r, g, b, label]; xyz in metres, scene minimum at 0"
POSITION_NOISE = 0.005  # metres
COLOR_JITTER = 6.0  # rgb units, per point

# Base colours (rgb 0-255); each object is tinted by a factor in [0.85, 1.15].
_COLORS: dict[str, tuple[float, float, float]] = {
    "floor": (181, 152, 110),
    "wall": (225, 222, 210),
    "table": (110, 70, 40),
    "chair": (200, 40, 40),
    "bed": (70, 110, 200),
    "sofa": (60, 150, 70),
    "lamp": (240, 210, 50),
    "lamp_pole": (60, 60, 60),
    "cabinet": (120, 120, 135),
    "shelf": (230, 130, 30),
    "plant": (30, 100, 30),
    "plant_pot": (160, 80, 50),
}

Points = np.ndarray  # (n, 3) float64


# -- surface samplers: each returns (n, 3) points, n ~ area * density (stochastic rounding) --
def _count(rng: np.random.Generator, area: float, density: float) -> int:
    return int(area * density + rng.random())


def _parallelogram(rng, density: float, origin, u, v) -> Points:
    """Points on ``origin + a*u + b*v``, a, b in [0, 1]."""
    origin, u, v = (np.asarray(t, dtype=np.float64) for t in (origin, u, v))
    n = _count(rng, float(np.linalg.norm(np.cross(u, v))), density)
    ab = rng.random((n, 2))
    return origin + ab[:, :1] * u + ab[:, 1:] * v


def _box(rng, density: float, size, z0: float = 0.0, bottom: bool = False) -> Points:
    """Surface of an axis-aligned box centred on x = y = 0, from z0 to z0 + size[2]."""
    sx, sy, sz = size
    lo = np.array([-sx / 2, -sy / 2, z0])
    ex, ey, ez = np.array([sx, 0, 0]), np.array([0, sy, 0]), np.array([0, 0, sz])
    faces = [
        (lo + ez, ex, ey),  # top
        (lo, ex, ez),
        (lo + ey, ex, ez),
        (lo, ey, ez),
        (lo + ex, ey, ez),
    ]
    if bottom:
        faces.append((lo, ex, ey))
    return np.concatenate([_parallelogram(rng, density, *f) for f in faces])


def _cylinder(rng, density: float, radius: float, height: float, z0: float, top: bool) -> Points:
    """Lateral surface of a vertical cylinder on x = y = 0 (and its top disc if ``top``)."""
    n = _count(rng, 2 * math.pi * radius * height, density)
    theta = rng.random(n) * 2 * math.pi
    side = np.stack(
        [radius * np.cos(theta), radius * np.sin(theta), z0 + height * rng.random(n)], 1
    )
    if not top:
        return side
    m = _count(rng, math.pi * radius * radius, density)
    r, phi = radius * np.sqrt(rng.random(m)), rng.random(m) * 2 * math.pi
    disc = np.stack([r * np.cos(phi), r * np.sin(phi), np.full(m, z0 + height)], 1)
    return np.concatenate([side, disc])


def _sphere(rng, density: float, radius: float, z_center: float) -> Points:
    n = _count(rng, 4 * math.pi * radius * radius, density)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True).clip(min=1e-12)
    return d * radius + np.array([0.0, 0.0, z_center])


def _shift(p: Points, dx: float, dy: float) -> Points:
    return p + np.array([dx, dy, 0.0])


# -- furniture: (parts [(points in the object frame, colour key, class)], footprint (sx, sy)) --


def _legs(rng, density: float, sx: float, sy: float, height: float, key: str, cls: int):
    t = 0.05
    return [
        (_shift(_box(rng, density, (t, t, height)), ax * (sx / 2 - t), ay * (sy / 2 - t)), key, cls)
        for ax in (-1, 1)
        for ay in (-1, 1)
    ]


def _table(rng, d):
    sx, sy, h = rng.uniform(1.0, 1.6), rng.uniform(0.7, 0.9), rng.uniform(0.7, 0.78)
    c = _C["table"]
    top = _box(rng, d, (sx, sy, 0.04), h - 0.04, bottom=True)
    return [(top, "table", c), *_legs(rng, d, sx, sy, h - 0.04, "table", c)], (sx, sy)


def _chair(rng, d):
    s, h = rng.uniform(0.42, 0.5), rng.uniform(0.42, 0.48)
    seat = _box(rng, d, (s, s, 0.05), h, bottom=True)
    back = _shift(_box(rng, d, (s, 0.05, 0.45), h + 0.05), 0.0, -(s / 2 - 0.025))
    c = _C["chair"]
    return [(seat, "chair", c), (back, "chair", c), *_legs(rng, d, s, s, h, "chair", c)], (s, s)


def _bed(rng, d):
    sx, sy, h = rng.uniform(1.9, 2.1), rng.uniform(1.2, 1.6), rng.uniform(0.45, 0.55)
    base = _box(rng, d, (sx, sy, h))
    head = _shift(_box(rng, d, (0.06, sy, 0.5), h), -(sx / 2 - 0.03), 0.0)
    return [(base, "bed", _C["bed"]), (head, "bed", _C["bed"])], (sx, sy)


def _sofa(rng, d):
    sx, sy = rng.uniform(1.6, 2.2), rng.uniform(0.8, 0.95)
    seat_h, arm = 0.42, 0.18
    c = _C["sofa"]
    parts = [
        (_box(rng, d, (sx, sy, seat_h)), "sofa", c),
        (_shift(_box(rng, d, (sx, 0.2, 0.45), seat_h), 0.0, -(sy / 2 - 0.1)), "sofa", c),
        (_shift(_box(rng, d, (arm, sy, 0.22), seat_h), -(sx / 2 - arm / 2), 0.0), "sofa", c),
        (_shift(_box(rng, d, (arm, sy, 0.22), seat_h), sx / 2 - arm / 2, 0.0), "sofa", c),
    ]
    return parts, (sx, sy)


def _lamp(rng, d):
    h, r = rng.uniform(1.4, 1.7), rng.uniform(0.2, 0.26)
    c = _C["lamp"]
    parts = [
        (_cylinder(rng, d, 0.15, 0.03, 0.0, top=True), "lamp_pole", c),
        (_cylinder(rng, d, 0.02, h, 0.03, top=False), "lamp_pole", c),
        (_cylinder(rng, d, r, 0.3, h, top=True), "lamp", c),
    ]
    return parts, (2 * r, 2 * r)


def _cabinet(rng, d):
    sx, sy, h = rng.uniform(0.8, 1.2), rng.uniform(0.45, 0.6), rng.uniform(0.8, 1.1)
    return [(_box(rng, d, (sx, sy, h)), "cabinet", _C["cabinet"])], (sx, sy)


def _shelf(rng, d):
    """An open bookcase: two side panels, a back panel and 4-5 thin boards."""
    sx, sy, h = rng.uniform(0.8, 1.0), rng.uniform(0.3, 0.4), rng.uniform(1.7, 2.0)
    c, t = _C["shelf"], 0.03
    parts = [
        (_shift(_box(rng, d, (t, sy, h)), -(sx / 2 - t / 2), 0.0), "shelf", c),
        (_shift(_box(rng, d, (t, sy, h)), sx / 2 - t / 2, 0.0), "shelf", c),
        (_shift(_box(rng, d, (sx, t, h)), 0.0, -(sy / 2 - t / 2)), "shelf", c),
    ]
    boards = int(rng.integers(4, 6))
    for z in np.linspace(0.05, h - t, boards):
        parts.append((_box(rng, d, (sx - 2 * t, sy - t, t), float(z), bottom=True), "shelf", c))
    return parts, (sx, sy)


def _plant(rng, d):
    r_pot, h_pot, r_leaves = rng.uniform(0.15, 0.2), rng.uniform(0.3, 0.4), rng.uniform(0.3, 0.4)
    c = _C["plant"]
    parts = [
        (_cylinder(rng, d, r_pot, h_pot, 0.0, top=False), "plant_pot", c),
        (_sphere(rng, d, r_leaves, h_pot + r_leaves * 0.8), "plant", c),
    ]
    return parts, (2 * r_leaves, 2 * r_leaves)


_FURNITURE: dict[str, Callable] = {
    "bed": _bed,
    "sofa": _sofa,
    "table": _table,
    "shelf": _shelf,
    "cabinet": _cabinet,
    "chair": _chair,
    "plant": _plant,
    "lamp": _lamp,
}
# Objects that hide the floor under them (the others stand on legs or a small base).
_SOLID = {"bed", "sofa", "cabinet", "shelf"}


def _layout(rng: np.random.Generator, width: float, depth: float, footprints: list) -> list | None:
    """Non-overlapping positions (x, y, yaw) for footprints (sx, sy), largest first, by rejection
    on bounding circles; None when one does not fit."""
    placed: list[tuple[float, float, float, float]] = []
    for sx, sy in footprints:
        r = 0.5 * math.hypot(sx, sy)
        for _ in range(200):
            x = rng.uniform(r + 0.05, width - r - 0.05)
            y = rng.uniform(r + 0.05, depth - r - 0.05)
            if all(math.hypot(x - px, y - py) > r + pr + 0.05 for px, py, pr, _ in placed):
                placed.append((x, y, r, rng.uniform(0, 2 * math.pi)))
                break
        else:
            return None
    return [(x, y, yaw) for x, y, _, yaw in placed]


def _inside_rect(xy: np.ndarray, x: float, y: float, yaw: float, sx: float, sy: float):
    c, s = math.cos(yaw), math.sin(yaw)
    dx, dy = xy[:, 0] - x, xy[:, 1] - y
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (np.abs(u) <= sx / 2) & (np.abs(v) <= sy / 2)


def draw_room(seed: int, split: str, index: int, density: float) -> np.ndarray:
    """One room as (N, 7) float32 ``[x, y, z, r, g, b, label]``, its minimum at the origin.

    A pure function of its arguments. ``density``: points per m^2 of surface.
    """
    ss = np.random.SeedSequence(seed, spawn_key=(_SPLIT_INDEX[split], index))
    rng = np.random.default_rng(ss)
    width, depth, height = rng.uniform(5.5, 7.5), rng.uniform(5.5, 7.5), rng.uniform(2.5, 3.0)
    kinds = [*_FURNITURE, *(["chair"] * int(rng.integers(0, 3)))]
    objects = [(kind, *_FURNITURE[kind](rng, density)) for kind in kinds]
    objects.sort(key=lambda o: -math.hypot(*o[2]))
    for _ in range(100):  # a handful of tries at most for these room sizes
        positions = _layout(rng, width, depth, [o[2] for o in objects])
        if positions is not None:
            break
    else:
        raise RuntimeError(f"synthetic3d: no furniture layout found for room {split}/{index}")

    floor = _parallelogram(rng, density, (0, 0, 0), (width, 0, 0), (0, depth, 0))
    hidden = np.zeros(len(floor), dtype=bool)
    furniture: list[tuple[Points, str, int, float]] = []
    for (kind, obj_parts, (sx, sy)), (x, y, yaw) in zip(objects, positions, strict=True):
        c, s = math.cos(yaw), math.sin(yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        tint = rng.uniform(0.85, 1.15)
        for pts, key, cls in obj_parts:
            furniture.append((pts @ rot.T + np.array([x, y, 0.0]), key, cls, tint))
        if kind in _SOLID:
            hidden |= _inside_rect(floor, x, y, yaw, sx, sy)
    parts = [(floor[~hidden], "floor", _C["floor"], rng.uniform(0.9, 1.1))]
    wall_tint = rng.uniform(0.9, 1.1)
    for origin, u in (
        ((0, 0, 0), (width, 0, 0)),
        ((0, depth, 0), (width, 0, 0)),
        ((0, 0, 0), (0, depth, 0)),
        ((width, 0, 0), (0, depth, 0)),
    ):
        pts = _parallelogram(rng, density, origin, u, (0, 0, height))
        parts.append((pts, "wall", _C["wall"], wall_tint))
    parts += furniture

    xyz = np.concatenate([p[0] for p in parts])
    rgb = np.concatenate(
        [np.tile(np.asarray(_COLORS[key]) * tint, (len(p), 1)) for p, key, _, tint in parts]
    )
    label = np.concatenate([np.full(len(p), cls, dtype=np.float64) for p, _, cls, _ in parts])
    xyz = xyz + rng.normal(scale=POSITION_NOISE, size=xyz.shape)
    rgb = np.clip(rgb + rng.normal(scale=COLOR_JITTER, size=rgb.shape), 0, 255)
    xyz -= xyz.min(axis=0)
    return np.concatenate([xyz, rgb, label[:, None]], axis=1).astype(np.float32)


def scene_name(split: str, index: int) -> str:
    return f"{split}_room{index:04d}"


def synthesize3d(
    out: Path | str,
    seed: int = 0,
    train_rooms: int = 16,
    val_rooms: int = 4,
    density: float = 400.0,
    min_points: int = MIN_POINTS,
) -> dict:
    """Draw ``train_rooms`` + ``val_rooms`` rooms, cut them into blocks under ``out`` (layout in
    the module docstring) and return the manifest. Blocks under ``out/blocks`` that this run
    does not write (a previous, larger run's) are removed. ``density``: points per m^2."""
    from lgkd_core.data.points.blocks import class_points, class_to_blocks, split_blocks

    if train_rooms < 1 or val_rooms < 0:
        raise ValueError(f"need >= 1 train room and >= 0 val rooms, got {train_rooms}, {val_rooms}")
    if density <= 0 or min_points < 1:
        raise ValueError(f"density must be > 0 and min_points >= 1, got {density}, {min_points}")
    out = Path(out)
    blocks_dir = out / "blocks"
    blocks_dir.mkdir(parents=True, exist_ok=True)
    num_classes = len(SYNTHETIC3D_CLASSES)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    pairs: list[tuple[str, list[int]]] = []
    blocks_of: dict[str, int] = {}
    points = 0
    for split, count in (("train", train_rooms), ("val", val_rooms)):
        for i in range(count):
            scene = scene_name(split, i)
            splits[split].append(scene)
            blocks = split_blocks(draw_room(seed, split, i, density), BLOCK_SIZE, min_points)
            blocks_of[scene] = len(blocks)
            for b, block in enumerate(blocks):
                name = f"{scene}_block_{b}"
                atomic_write_bytes(blocks_dir / f"{name}.npy", lambda fh, a=block: np.save(fh, a))
                pairs.append((name, class_points(block[:, 6], num_classes)))
                points += len(block)
    written = {f"{name}.npy" for name, _ in pairs}
    for path in blocks_dir.glob("*_room*_block_*.npy"):
        if path.name not in written:
            path.unlink()

    c2b = class_to_blocks(pairs, num_classes)
    atomic_write_json(out / "class2blocks.json", {str(c): names for c, names in c2b.items()})
    scenes = splits["train"] + splits["val"]
    manifest = {
        "dataset": "synthetic3d",
        "lgkd_core_version": __version__,
        "settings": {
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
            "train_rooms": train_rooms,
            "val_rooms": val_rooms,
            "points_per_m2": density,
            "block_size": BLOCK_SIZE,
            "min_points": min_points,
        },
        "block_format": BLOCK_FORMAT,
        "block_files": "blocks/<scene>_block_<i>.npy, i from 0 over kept blocks, x-major",
        "class2blocks_rule": "more than max(5% of the block's points, 100) points of the class",
        "classes": list(SYNTHETIC3D_CLASSES),
        "scene_count": len(scenes),
        "block_count": len(pairs),
        "point_count": points,
        "scenes": scenes,
        "splits": splits,
        "blocks_per_split": {k: sum(blocks_of[s] for s in v) for k, v in splits.items()},
        "blocks_per_class": {str(c): len(names) for c, names in c2b.items()},
    }
    atomic_write_json(out / "manifest.json", manifest)
    log.info("synthetic3d: %d blocks from %d rooms in %s", len(pairs), len(scenes), out)
    return manifest


# -- command line (a MODULE_COMMANDS entry of lgkd_core.cli) -------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-rooms", type=int, default=16)
    p.add_argument("--val-rooms", type=int, default=4)
    p.add_argument("--density", type=float, default=400.0, help="points per m^2 of surface")
    p.add_argument("--min-points", type=int, default=MIN_POINTS, help="drop smaller blocks")


def run(args: argparse.Namespace) -> int:
    synthesize3d(
        args.out, args.seed, args.train_rooms, args.val_rooms, args.density, args.min_points
    )
    return 0
