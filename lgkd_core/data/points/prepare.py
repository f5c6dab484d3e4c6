"""Raw ScanNet v2 / S3DIS -> 1 m blocks, the class-to-blocks index and a manifest.

``python -m lgkd_core prepare-points --dataset scannet --source RAW --out OUT`` writes:

- ``OUT/blocks/<scene>_block_<i>.npy``: one block, (n, 7) float32 ``[x, y, z, r, g, b, label]``
  (xyz in metres with the scene's minimum at the origin, rgb 0-255, label a class index of
  lgkd_core.data.points_classes). ``i`` counts the kept blocks of the scene from 0, x-major
  over the grid (see lgkd_core.data.points.blocks).
- ``OUT/index/<scene>.json``: the scene's settings and, per block, its name and points per
  class. Written after the scene's blocks, it marks the scene as done: a rerun skips every
  scene whose index matches the settings and whose blocks exist, so an interrupted run resumes.
- ``OUT/class2blocks.json``: {class index: [block names]}, the blocks holding more than
  max(5 % of the block's points, 100) points of the class (a block name plus ``.npy`` is its
  file under ``blocks/``). Every class is a key.
- ``OUT/manifest.json``: dataset, settings, classes, block and point counts, the scenes and the
  scenes of each split.

Every file is written atomically. Scenes are processed in parallel processes.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from lgkd_core import __version__
from lgkd_core.data.points import s3dis, scannet
from lgkd_core.data.points.blocks import (
    BLOCK_SIZE,
    MIN_POINTS,
    class_points,
    class_to_blocks,
    split_blocks,
)
from lgkd_core.data.points.errors import PointDataWarning
from lgkd_core.data.points_classes import POINT_CLASSES
from lgkd_core.io import atomic_write_bytes, atomic_write_json
from lgkd_core.workers import num_workers

log = logging.getLogger("lgkd_core.prepare_points")

DATASETS = ("scannet", "s3dis")
FORMAT = 1  # of the index files; a change makes a rerun redo every scene
BLOCK_FORMAT = "(n, 7) float32 [x, y, z, r, g, b, label]; xyz in metres, scene minimum at 0"


def _block_name(scene: str, i: int) -> str:
    return f"{scene}_block_{i}"


def _index_ok(index_path: Path, blocks_dir: Path, settings: dict) -> bool:
    """True when a scene's index exists, records these settings, and all its blocks exist."""
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return False
    return index.get("settings") == settings and all(
        (blocks_dir / f"{b['name']}.npy").is_file() for b in index.get("blocks", [])
    )


def _process_scene(job: tuple) -> tuple[dict, list[str]]:
    """Read one scene, write its blocks then its index; returns (index, warning texts)."""
    dataset, scene, scene_dir, out, settings, label_map = job
    out = Path(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PointDataWarning)
        if dataset == "scannet":
            points = scannet.read_scene(Path(scene_dir), label_map)
        else:
            points = s3dis.read_room(Path(scene_dir))
        blocks = split_blocks(points, settings["block_size"], settings["min_points"])
        num_classes = len(POINT_CLASSES[dataset])
        entries = []
        for i, block in enumerate(blocks):
            name = _block_name(scene, i)
            atomic_write_bytes(out / "blocks" / f"{name}.npy", lambda fh, b=block: np.save(fh, b))
            entries.append(
                {
                    "name": name,
                    "points": len(block),
                    "class_points": class_points(block[:, 6], num_classes),
                }
            )
        index_path = out / "index" / f"{scene}.json"
        _remove_stale(index_path, out / "blocks", {e["name"] for e in entries})
        index = {"scene": scene, "settings": settings, "points": len(points), "blocks": entries}
        atomic_write_json(index_path, index)
    texts = [str(w.message) for w in caught if issubclass(w.category, PointDataWarning)]
    return index, texts


def _remove_stale(index_path: Path, blocks_dir: Path, keep: set[str]) -> None:
    """Delete the blocks a previous index of this scene listed that the new one does not (a
    rerun with other settings can keep fewer blocks)."""
    try:
        old = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return
    for b in old.get("blocks", []):
        if b.get("name") not in keep:
            (blocks_dir / f"{b['name']}.npy").unlink(missing_ok=True)


def _run_jobs(jobs: list[tuple], workers: int) -> Iterator[tuple[dict, list[str]]]:
    if not jobs:
        return
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            yield _process_scene(job)
        return
    # spawn, not fork: the caller may hold threads that fork would copy badly.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures = [pool.submit(_process_scene, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


class _Progress:
    """A tqdm bar when stderr is a terminal, else a log line every ~5 % of the scenes."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.count = total, done
        self.every = max(1, total // 20)
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="scene", dynamic_ncols=True)

    def step(self, scene: str) -> None:
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.count % self.every == 0 or self.count == self.total:
            log.info("%d/%d scenes (last: %s)", self.count, self.total, scene)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _discover(dataset: str, source: Path) -> tuple[dict[str, Path], dict[str, list[str]]]:
    if dataset == "scannet":
        scenes = scannet.find_scenes(source)
        return scenes, scannet.read_splits(source, list(scenes))
    rooms = s3dis.find_rooms(source)
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for name in rooms:
        splits[s3dis.room_split(name)].append(name)
    return rooms, splits


def prepare_points(
    dataset: str,
    source: Path | str,
    out: Path | str,
    workers: int = 0,
    min_points: int = MIN_POINTS,
    label_mapping: str = "protocol",
) -> dict:
    """Cut every scene of a raw ScanNet v2 / S3DIS folder into blocks under ``out`` (layout in
    the module docstring) and return the manifest. ``workers``: processes (0: one per core).
    ``label_mapping`` (ScanNet only): ``protocol`` (the published numbers) or ``corrected``.

    Raises PointDataError (a ValueError) for a missing or malformed raw folder or file."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if min_points < 1:
        raise ValueError(f"min_points must be >= 1, got {min_points}")
    if label_mapping not in scannet.LABEL_MAPPINGS:
        raise ValueError(
            f"label mapping must be one of {scannet.LABEL_MAPPINGS}, got {label_mapping!r}"
        )
    source, out = Path(source), Path(out)
    scenes, splits = _discover(dataset, source)
    settings: dict = {"format": FORMAT, "dataset": dataset, "block_size": BLOCK_SIZE}
    settings["min_points"] = min_points
    label_map: dict[str, int] = {}
    if dataset == "scannet":
        settings["label_mapping"] = label_mapping
        label_map = scannet.read_label_map(source / scannet.LABEL_TABLE, label_mapping)
    elif label_mapping != "protocol":
        warnings.warn(
            "label_mapping applies to scannet only; ignored", PointDataWarning, stacklevel=2
        )

    blocks_dir, index_dir = out / "blocks", out / "index"
    blocks_dir.mkdir(parents=True, exist_ok=True)
    pending = [s for s in scenes if not _index_ok(index_dir / f"{s}.json", blocks_dir, settings)]
    log.info(
        "%s: %d scenes, %d already done, %d to cut",
        dataset,
        len(scenes),
        len(scenes) - len(pending),
        len(pending),
    )
    jobs = [(dataset, s, str(scenes[s]), str(out), settings, label_map) for s in pending]
    progress = _Progress(len(scenes), len(scenes) - len(pending))
    try:
        for index, texts in _run_jobs(jobs, num_workers(workers)):
            for text in texts:
                warnings.warn(text, PointDataWarning, stacklevel=2)
            progress.step(index["scene"])
    finally:
        progress.close()
    return _write_summary(dataset, out, list(scenes), splits, settings)


def _write_summary(
    dataset: str, out: Path, scenes: list[str], splits: dict[str, list[str]], settings: dict
) -> dict:
    classes = POINT_CLASSES[dataset]
    per_scene = {s: json.loads((out / "index" / f"{s}.json").read_text()) for s in scenes}
    pairs = [(b["name"], b["class_points"]) for s in scenes for b in per_scene[s]["blocks"]]
    c2b = class_to_blocks(pairs, len(classes))
    atomic_write_json(out / "class2blocks.json", {str(c): names for c, names in c2b.items()})

    known = {f"{name}.npy" for name, _ in pairs}
    strays = [
        p.name for p in (out / "blocks").iterdir() if p.suffix == ".npy" and p.name not in known
    ]
    if strays:
        warnings.warn(
            f"{len(strays)} file(s) in {out / 'blocks'} belong to no scene of this source "
            f"(e.g. {sorted(strays)[0]}); they are not in class2blocks.json",
            PointDataWarning,
            stacklevel=3,
        )
    blocks_of = {s: len(per_scene[s]["blocks"]) for s in scenes}
    manifest = {
        "dataset": dataset,
        "lgkd_core_version": __version__,
        "settings": settings,
        "block_format": BLOCK_FORMAT,
        "block_files": "blocks/<scene>_block_<i>.npy, i from 0 over kept blocks, x-major",
        "class2blocks_rule": "more than max(5% of the block's points, 100) points of the class",
        "classes": list(classes),
        "scene_count": len(scenes),
        "block_count": len(pairs),
        "point_count": sum(b["points"] for s in scenes for b in per_scene[s]["blocks"]),
        "scenes": scenes,
        "splits": splits,
        "blocks_per_split": {k: sum(blocks_of[s] for s in v) for k, v in splits.items()},
        "blocks_per_class": {str(c): len(names) for c, names in c2b.items()},
    }
    atomic_write_json(out / "manifest.json", manifest)
    log.info("%s: %d blocks from %d scenes in %s", dataset, len(pairs), len(scenes), out)
    return manifest


# -- command line (a MODULE_COMMANDS entry of lgkd_core.cli) -------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--source", required=True, type=Path, help="the raw release folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.add_argument("--min-points", type=int, default=MIN_POINTS, help="drop smaller blocks")
    p.add_argument(
        "--label-mapping",
        choices=scannet.LABEL_MAPPINGS,
        default="protocol",
        help="ScanNet: 'protocol' (published numbers; refrigerator -> unannotated) or "
        "'corrected' (the table's 'refridgerator' read as refrigerator)",
    )


def run(args: argparse.Namespace) -> int:
    prepare_points(
        args.dataset, args.source, args.out, args.workers, args.min_points, args.label_mapping
    )
    return 0
