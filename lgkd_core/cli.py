"""The command line the workflow rules call: ``python -m lgkd_core <command> ...``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

import yaml

from lgkd_core import __version__
from lgkd_core.io import parse_pairs


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _parse_set(items: list[str]) -> dict:
    """``--set key=value`` items; values parsed as YAML scalars (numbers, booleans, null)."""
    return {k: yaml.safe_load(v) for k, v in parse_pairs(items, "--set").items()}


# -- synthesize ------------------------------------------------------------------------------
def _add_synthesize(sub) -> None:
    p = sub.add_parser("synthesize", help="generate the embedded offline dataset (VOC layout)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=1000, help="number of training images")
    p.add_argument("--val", type=int, default=300, help="number of validation images")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    p.set_defaults(func=_run_synthesize)


def _run_synthesize(args) -> int:
    from lgkd_core.data.synthetic import synthesize

    synthesize(args.out, args.seed, args.train, args.val, args.size, workers=args.workers)
    return 0


# -- prepare ---------------------------------------------------------------------------------
def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="write the per-step image id lists of a task")
    p.add_argument("--dataset", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--out-dir", required=True, type=Path)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overlap", dest="overlap", action="store_true", default=True)
    g.add_argument("--disjoint", dest="overlap", action="store_false")
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    from lgkd_core.data.splits import prepare_splits

    counts = prepare_splits(
        args.dataset, args.task, args.data_root, args.out_dir, args.overlap, args.workers
    )
    logging.getLogger("lgkd_core.prepare").info("images per step: %s", counts)
    return 0


# -- train -----------------------------------------------------------------------------------
def _add_train(sub) -> None:
    from lgkd_core.engine.trainer import TrainConfig
    from lgkd_core.options import add_dataclass_arguments

    p = sub.add_parser(
        "train",
        help="train one incremental step (works under torchrun)",
        description="Train one step. Every option is a field of lgkd_core.engine.TrainConfig.",
    )
    add_dataclass_arguments(p, TrainConfig)
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from lgkd_core.engine.trainer import TrainConfig, train
    from lgkd_core.options import from_namespace

    train(from_namespace(TrainConfig, args))
    return 0


# -- evaluate --------------------------------------------------------------------------------
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a step model; writes metrics.json")
    p.add_argument("--dataset", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--step", required=True, type=int)
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--splits", type=Path)
    p.add_argument("--crop-size", type=int, default=512, help="0: full images, batch 1")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backbone", help="for files that do not record it (reference checkpoints)")
    p.add_argument("--output-stride", type=int, choices=(8, 16))
    p.add_argument("--head-channels", type=int)
    p.add_argument(
        "--predictions",
        type=Path,
        help="also write the predictions on the showcase images (.npz) for predictions.png",
    )
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from lgkd_core.engine.evaluate import evaluate

    arch = {
        k: v
        for k, v in (
            ("backbone", args.backbone),
            ("output_stride", args.output_stride),
            ("head_channels", args.head_channels),
        )
        if v is not None
    }
    evaluate(
        args.dataset,
        args.task,
        args.step,
        args.data_root,
        args.model,
        args.out,
        splits=args.splits,
        crop_size=args.crop_size or None,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        arch=arch,
        predictions=args.predictions,
    )
    return 0


# Commands whose module holds ``add_arguments(parser)`` and ``run(args)``: name -> (module, help).
MODULE_COMMANDS = {
    "download": ("lgkd_core.data.download", "download and extract VOC (+SBD masks) or ADE20k"),
    "download-pretrained": (
        "lgkd_core.data.pretrained",
        "download the In-Place ABN ImageNet ResNet-101 (resumable, MD5-checked)",
    ),
    "import-step0": (
        "lgkd_core.engine.released",
        "use a released step-0 model as an experiment's step 0",
    ),
    "launch": ("lgkd_core.launch", "run a command on every GPU/CPU process (torchrun, srun)"),
    "report": ("lgkd_core.report", "tables and plots from metrics.json files"),
    "compare": ("lgkd_core.compare", "every method of a setting beside the published numbers"),
    "methods": ("lgkd_core.methods", "the method presets and their loss weights, as CSV"),
    "status": ("lgkd_core.status", "where every run and step stands (state, progress, mIoU)"),
    "prepare-points": (
        "lgkd_core.data.points.prepare",
        "cut raw ScanNet v2 / S3DIS scenes into 1 m blocks (3DPC-CISS protocol)",
    ),
    "synthesize3d": (
        "lgkd_core.data.synthetic3d",
        "generate synthetic indoor rooms as 1 m point blocks (the prepare-points layout)",
    ),
}


def _module_command(name: str):
    """The parser adder of a MODULE_COMMANDS entry; the module is imported only when used."""

    def add(sub) -> None:
        module_name, help_text = MODULE_COMMANDS[name]
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)

    return add


COMMANDS = {
    "synthesize": _add_synthesize,
    "prepare": _add_prepare,
    "train": _add_train,
    "evaluate": _add_evaluate,
    **{name: _module_command(name) for name in MODULE_COMMANDS},
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI; ``only`` builds just that command (its module alone is imported: fast start)."""
    parser = argparse.ArgumentParser(prog="python -m lgkd_core", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lgkd_core {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, add in COMMANDS.items():
        if only is None or name == only:
            add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in COMMANDS else None
    if argv[:1] == ["--version"]:
        only = "--version"  # no command's module needed: answer at once
    args = build_parser(only).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input (data layout, config, checkpoint): one clear line, no traceback.
        logging.getLogger("lgkd_core").error("%s", exc)
        return 2
