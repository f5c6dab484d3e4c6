"""Builds the datasets and loaders of one step from a source, a task and optional split lists."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lgkd_core.data.dataset import SegmentationDataset
from lgkd_core.data.labels import eval_lut, train_lut
from lgkd_core.data.sources import open_source
from lgkd_core.data.splits import (
    SHOWCASE_FILE,
    mask_label_sets,
    read_ids,
    select_eval,
    select_showcase,
    select_train,
)
from lgkd_core.data.transforms import eval_transform, train_transform
from lgkd_core.engine.sampling import SeededSamples, ShardedSampler
from lgkd_core.tasks import Task

log = logging.getLogger(__name__)

SPLIT_OF_PURPOSE = {"train": "train", "val": "val"}


def step_ids(
    source,
    task: Task,
    step: int,
    purpose: str,
    splits_dir: Path | None = None,
    overlap: bool = True,
    workers: int = 0,
) -> list[str]:
    """Image ids used at ``step`` for ``purpose`` (``train`` or ``val``).

    Read from ``splits_dir/step{step}-{purpose}.txt`` when given (what the workflow prepares),
    otherwise computed from the masks.
    """
    if splits_dir is not None:
        path = Path(splits_dir) / f"step{step}-{purpose}.txt"
        if not path.is_file():
            raise FileNotFoundError(
                f"split list {path} is missing; create it with `python -m lgkd_core prepare "
                f"--dataset {task.dataset} --task {task.name} --out-dir {splits_dir} ...`"
            )
        return read_ids(path)
    split = SPLIT_OF_PURPOSE[purpose]
    all_ids = source.ids(split)
    paths = [source.mask_path(split, i) for i in all_ids]
    label_sets = mask_label_sets(paths, workers=workers)
    if purpose == "train":
        keep = select_train(label_sets, task, step, overlap=overlap, paths=paths)
    else:
        keep = select_eval(label_sets, task, step, paths=paths)
    return [all_ids[k] for k in keep]


def showcase_ids(source, task: Task, splits_dir: Path | None = None) -> list[str]:
    """The validation images of the predictions figure: ``splits_dir/showcase.txt`` when the
    split preparation wrote it, otherwise chosen from the masks of the final step's images."""
    if splits_dir is not None and (Path(splits_dir) / SHOWCASE_FILE).is_file():
        return read_ids(Path(splits_dir) / SHOWCASE_FILE)
    ids = step_ids(source, task, task.num_steps - 1, "val", splits_dir)
    label_sets = mask_label_sets([source.mask_path("val", i) for i in ids])
    return [ids[k] for k in select_showcase(label_sets, task)]


def train_loader(
    dataset: str,
    data_root: Path,
    task: Task,
    step: int,
    crop_size: int,
    batch_per_rank: int,
    rank: int,
    world_size: int,
    seed: int,
    workers: int,
    splits_dir: Path | None = None,
    overlap: bool = True,
    pin_memory: bool = False,
) -> tuple[DataLoader, ShardedSampler]:
    """Shuffled, per-rank sharded loader of the step's training images (labels in model ids)."""
    source = open_source(dataset, data_root)
    ids = step_ids(source, task, step, "train", splits_dir, overlap)
    if not ids:
        raise ValueError(
            f"step {step} of {task.dataset}/{task.name} has no training image under {data_root}"
        )
    ds = SegmentationDataset(
        source, "train", ids, train_lut(task, step), train_transform(crop_size)
    )
    sampler = ShardedSampler(len(ds), rank, world_size, seed=seed, shuffle=True, pad=True)
    if len(sampler) < batch_per_rank:
        raise ValueError(
            f"step {step} has {len(ids)} training images, fewer than one batch per rank "
            f"({batch_per_rank} x {world_size} ranks); lower batch_size"
        )
    loader = DataLoader(
        SeededSamples(ds),
        batch_size=batch_per_rank,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    log.info("step %d: %d training images, %d iterations per epoch", step, len(ids), len(loader))
    return loader, sampler


def eval_loader(
    dataset: str,
    data_root: Path,
    task: Task,
    step: int,
    crop_size: int | None,
    batch_per_rank: int,
    rank: int,
    world_size: int,
    workers: int,
    splits_dir: Path | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """Validation images of ``step`` (seen classes kept, future ones as background), no padding."""
    source = open_source(dataset, data_root)
    ids = step_ids(source, task, step, "val", splits_dir)
    ds = SegmentationDataset(source, "val", ids, eval_lut(task, step), eval_transform(crop_size))
    sampler = ShardedSampler(len(ds), rank, world_size, shuffle=False, pad=False)
    return DataLoader(
        SeededSamples(ds),
        batch_size=batch_per_rank if crop_size else 1,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
    )


def to_device(batch, device: torch.device, channels_last: bool = False):
    images, labels = batch
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    return images, labels.to(device, non_blocking=True)
