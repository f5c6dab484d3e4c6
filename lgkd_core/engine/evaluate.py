"""Evaluation of a step model on the validation images of its step; writes ``metrics.json``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from lgkd_core import provenance
from lgkd_core.data.dataset import SegmentationDataset
from lgkd_core.data.sources import open_source
from lgkd_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from lgkd_core.engine import distributed as D
from lgkd_core.engine.inputs import eval_loader, showcase_ids, to_device
from lgkd_core.engine.teacher import build_from_file
from lgkd_core.io import atomic_write_bytes, atomic_write_json
from lgkd_core.metrics import ConfusionMatrix
from lgkd_core.models import resolve_norm
from lgkd_core.tasks import Task, get_task

log = logging.getLogger("lgkd_core.evaluate")


@torch.no_grad()
def confusion_over(model, loader, num_classes: int, device, amp_dtype=None) -> ConfusionMatrix:
    """Streaming confusion matrix of ``model``'s argmax over ``loader`` (on ``device``)."""
    cm = ConfusionMatrix(num_classes, device=device)
    model.eval()
    for batch in loader:
        images, labels = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            logits = model(images)
        cm.update(logits.argmax(dim=1), labels)
    return cm


@torch.no_grad()
def predict_showcase(
    model, source, ids: list[str], task: Task, step: int, crop_size: int | None, device
) -> dict[str, np.ndarray]:
    """Predictions of ``model`` on the images ``ids``, for the predictions figure.

    Returns ``ids`` (str (K,)), ``step`` and per image ``k``: ``image_k`` uint8 (3, H, W) as
    the model saw it (after the evaluation resize and crop), ``label_k`` uint8 (H, W) the ground
    truth in dataset class ids (every class, 255 ignored), ``pred_k`` uint8 (H, W) the argmax
    mapped back to dataset class ids of the step's class order.
    """
    identity = np.arange(256, dtype=np.uint8)  # ground truth with every class, not the step's
    ds = SegmentationDataset(source, "val", ids, identity, eval_transform(crop_size))
    to_dataset_id = torch.tensor(task.order(step), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    model.eval()
    out: dict[str, np.ndarray] = {"ids": np.array(ids, dtype=str), "step": np.array(step)}
    for k in range(len(ds)):
        image, label = ds[k]
        logits = model(image.unsqueeze(0).to(device)).float().cpu()
        pixels = (image * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)
        out[f"image_{k}"] = pixels.numpy()
        out[f"label_{k}"] = label.to(torch.uint8).numpy()
        out[f"pred_{k}"] = to_dataset_id[logits[0].argmax(dim=0)].numpy()
    return out


def write_predictions(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as one compressed ``.npz``, written atomically."""
    atomic_write_bytes(Path(path), lambda fh: np.savez_compressed(fh, **arrays))


def evaluate(
    dataset: str,
    task_name: str,
    step: int,
    data_root: Path,
    model_path: Path,
    out: Path,
    splits: Path | None = None,
    crop_size: int | None = 512,
    batch_size: int = 8,
    workers: int = 2,
    device: str = "auto",
    arch: dict | None = None,
    predictions: Path | None = None,
) -> dict:
    """Evaluate ``model_path`` on step ``step``'s validation set; rank 0 writes ``out``.

    ``crop_size``: resize the shorter side and centre-crop (the published protocol); ``None``
    evaluates full images one at a time. ``arch`` gives backbone/output_stride/head_channels for
    files that do not record them (reference checkpoints). ``predictions``: also write the
    predictions on the showcase images there (:func:`predict_showcase`, rank 0 only).
    """
    ctx = D.setup_distributed(device)
    started = time.monotonic()
    try:
        hosts = provenance.hosts()  # a collective: every rank
        task = get_task(dataset, task_name)
        arch = {
            "backbone": "resnet101",
            "output_stride": 16,
            "head_channels": 256,
            **(arch or {}),
            "norm": resolve_norm("auto", ctx.device),
        }
        model, payload = build_from_file(Path(model_path), task, step, arch, ctx.device)
        loader = eval_loader(
            dataset,
            data_root,
            task,
            step,
            crop_size,
            max(1, batch_size // ctx.world_size),
            ctx.rank,
            ctx.world_size,
            workers,
            splits,
            pin_memory=ctx.device.type == "cuda",
        )
        cm = confusion_over(model, loader, task.num_classes(step), ctx.device)
        cm.all_reduce()
        n_images = torch.tensor([len(loader.sampler)], device=ctx.device)
        if ctx.distributed:
            torch.distributed.all_reduce(n_images)
        result = {
            "dataset": dataset,
            "task": task_name,
            "step": step,
            "model": str(model_path),
            "method": payload.get("method"),
            "init": payload.get("init"),  # how the chain's step 0 started
            "provenance": {
                "train": payload.get("provenance"),
                "evaluate": provenance.collect(
                    hosts=hosts,
                    world_size=ctx.world_size,
                    threads_per_rank=torch.get_num_threads(),
                    wall_time_s=round(time.monotonic() - started, 3),
                ),
            },
            "num_images": int(n_images.item()),
            "crop_size": crop_size,
            "classes": task.channel_names(step),
            "class_ids": task.order(step),
            **cm.to_dict(task, step),
        }
        if ctx.is_main:
            if predictions is not None:
                source = open_source(dataset, data_root)
                ids = showcase_ids(source, task, splits)
                shown = predict_showcase(model, source, ids, task, step, crop_size, ctx.device)
                write_predictions(Path(predictions), shown)
            atomic_write_json(Path(out), result)
            s = result["summary"]
            log.info(
                "step %d: background %.2f old %.2f new %.2f all %.2f (mIoU %%)",
                step,
                *(
                    100 * (s[k] if s[k] is not None else float("nan"))
                    for k in ("background", "old", "new", "all")
                ),
            )
        del model
        return result
    finally:
        D.shutdown(ctx)
