"""Use a released step-0 model (the LGKD/PLOP authors' ``.pth`` or a project ``model.pt``) as
step 0 of an experiment: checked against the task and the architecture, written as ``model.pt``.

``python -m lgkd_core import-step0 --source FILE_OR_URL --dataset voc --task 15-1 --out ...``
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from urllib.parse import urlparse

from lgkd_core.engine.checkpoint import load_model_file, save_model_file
from lgkd_core.engine.teacher import STRUCTURE_KEYS, check_layout, load_weights
from lgkd_core.models import build_model
from lgkd_core.tasks import get_task

log = logging.getLogger("lgkd_core.import")


def fetch_source(source: str, cache_dir: Path) -> Path:
    """A local path for ``source`` (a path, ``file://`` or ``http(s)://`` URL; downloads resume)."""
    parsed = urlparse(source)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else source)
        if not path.is_file():
            raise FileNotFoundError(
                f"step0_checkpoint {source}: no such file; give a model.pt, a released .pth "
                "or a URL"
            )
        return path
    from lgkd_core.data.download import download

    dest = cache_dir / Path(parsed.path).name
    download(source, dest, sha256=None)
    return dest


def import_step0(
    source: str, dataset: str, task_name: str, out: Path, arch: dict, cache_dir: Path
) -> Path:
    """Check ``source`` against step 0 of the task and ``arch``; write it to ``out`` atomically."""
    path = fetch_source(source, cache_dir)
    task = get_task(dataset, task_name)
    payload = load_model_file(path)
    check_layout(payload, path, task, 0)
    arch = {"output_stride": 16, "head_channels": 256, **arch}
    for key in STRUCTURE_KEYS:
        if key in payload and key in arch and payload[key] != arch[key]:
            raise ValueError(
                f"step0_checkpoint {source} has {key}={payload[key]!r} but the experiment "
                f"asks for {key}={arch[key]!r}; set {key}: {payload[key]} in the experiment"
            )
    model = build_model(classes_per_step=task.classes_per_step(0), norm="abn", **arch)
    load_weights(model, payload["model_state"], path)
    meta = {
        k: v
        for k, v in payload.items()
        if k not in ("model_state", "format") and not k.startswith("_")
    }
    meta.update(
        dataset=dataset,
        task=task.name,
        step=0,
        order=task.order(0),
        classes_per_step=task.classes_per_step(0),
        **arch,
        imported_from=str(source),
        init="checkpoint",  # a released step 0: no download, no ImageNet start of its own
        source_init=payload.get("init"),
    )
    meta.setdefault("method", "released")
    save_model_file(out, payload["model_state"], meta)
    log.info("imported %s as %s (step 0 of %s/%s)", source, out, dataset, task.name)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True, help="file, file:// or http(s):// URL")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--head-channels", type=int, default=256)
    parser.add_argument("--output-stride", type=int, default=16, choices=(8, 16))
    parser.add_argument("--cache-dir", type=Path, default=Path("data/checkpoints"))


def run(args: argparse.Namespace) -> int:
    arch = {
        "backbone": args.backbone,
        "head_channels": args.head_channels,
        "output_stride": args.output_stride,
    }
    import_step0(args.source, args.dataset, args.task, args.out, arch, args.cache_dir)
    return 0
