"""Training data path: samples/s of decode + joint transform to a 512 crop + label remap, 1 core.

Ours: ``lgkd_core.data`` as the training loader runs it: ``SegmentationDataset`` (libjpeg decode
via torchvision, PNG mask via PIL, one 256-entry LUT indexing on the uint8 mask) with
``train_transform(512)`` (torchvision.transforms.v2 on uint8 tensors), each sample under its seed
(``SeededSamples``).

Baseline, what the reference does (PLOP ``dataset/transform.py``, ``dataset/voc.py``): PIL decode,
random resized crop (scale 0.5-2.0) and flip on PIL images, ``to_tensor`` + ``normalize``, then
the label remap ``target.apply_(lambda x: order[x] if x in kept else 0)``, a Python call per
pixel. A third row, the baseline with a LUT instead of ``apply_``, shows where the time goes.
Files: ``bench/voc_like.py`` (500x375 JPEGs, palette PNG masks). One process, 1 torch thread.
"""

from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from common import parse_args, print_machine, print_table, ratio_line, set_threads, time_calls
from PIL import Image
from torchvision.transforms import InterpolationMode
from voc_like import write_voc_layout

from lgkd_core.data.dataset import SegmentationDataset
from lgkd_core.data.labels import train_lut
from lgkd_core.data.sources import open_source
from lgkd_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform
from lgkd_core.engine.sampling import SeededSamples
from lgkd_core.tasks import get_task

CROP = 512
STEP = 1  # VOC 15-1 step 1: class 16 kept, every other foreground class -> background


def crop_params(width: int, height: int, scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3)):
    """Random (top, left, h, w) of area ``scale`` x image and aspect ``ratio`` (10 tries, then
    the centred largest crop of the allowed aspect), like torchvision's RandomResizedCrop."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if w <= width and h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ReferenceStylePipeline:
    """PIL decode and transforms, then a per-pixel Python remap (or a LUT, ``per_pixel=False``)."""

    def __init__(self, pairs, order: list[int], kept: list[int], per_pixel: bool = True) -> None:
        self.pairs = pairs
        self.position = {c: k for k, c in enumerate(order)}
        self.position[255] = 255
        self.kept = set(kept) | {255}
        self.per_pixel = per_pixel
        lut = np.zeros(256, dtype=np.uint8)
        for c in self.kept:
            lut[c] = self.position[c]
        self.lut = torch.from_numpy(lut)

    def __getitem__(self, index: int):
        image_path, mask_path = self.pairs[index]
        img = Image.open(image_path).convert("RGB")
        lbl = Image.open(mask_path)
        top, left, h, w = crop_params(*img.size)
        img = TF.resized_crop(img, top, left, h, w, [CROP, CROP], InterpolationMode.BILINEAR)
        lbl = TF.resized_crop(lbl, top, left, h, w, [CROP, CROP], InterpolationMode.NEAREST)
        if random.random() < 0.5:
            img, lbl = TF.hflip(img), TF.hflip(lbl)
        image = TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD)
        target = torch.from_numpy(np.array(lbl, dtype=np.uint8))
        if self.per_pixel:
            position, kept = self.position, self.kept
            target = target.apply_(lambda x: position[x] if x in kept else 0)
        else:
            target = self.lut[target.long()]
        return image, target.long()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    set_threads(args.threads)
    print_machine(f"bench_data_path: training samples/s, {CROP} crop, 1 process")
    n_images, repeats = (4, 1) if args.quick else (32, 3)
    task = get_task("voc", "15-1")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        ids = write_voc_layout(Path(tmp), n_images, 0, n_distinct=n_images)["train"]
        source = open_source("voc", tmp)
        ours = SeededSamples(
            SegmentationDataset(source, "train", ids, train_lut(task, STEP), train_transform(CROP))
        )
        pairs = [(source.image_path("train", i), source.mask_path("train", i)) for i in ids]
        kept = [0, *task.new_classes(STEP)]
        ref = ReferenceStylePipeline(pairs, task.order(STEP), kept, per_pixel=True)
        ref_lut = ReferenceStylePipeline(pairs, task.order(STEP), kept, per_pixel=False)
        # Each side draws its own crops (Python's RNG vs per-sample torch seeds); both draw from
        # the same distribution, so the work per sample is the same on average.
        random.seed(0)

        def run_ours():
            for k in range(n_images):
                image, mask = ours[(k, k)]
            assert image.shape == (3, CROP, CROP) and mask.dtype == torch.int64

        def run_ref():
            for k in range(n_images):
                image, _ = ref[k]
            assert image.shape == (3, CROP, CROP)

        def run_ref_lut():
            for k in range(n_images):
                ref_lut[k]

        times = time_calls(
            {"reference": run_ref, "reference_lut": run_ref_lut, "ours": run_ours},
            repeats=repeats,
            warmup=1,
        )
    per = {k: t.median / n_images for k, t in times.items()}
    rows = [
        ["reference-style: PIL + per-pixel Python remap (apply_)", per["reference"]],
        ["reference-style PIL transforms + LUT remap (decomposition)", per["reference_lut"]],
        ["ours: lgkd_core.data (v2 on tensors, LUT)", per["ours"]],
    ]
    print_table(["pipeline", "ms/sample", "samples/s"], [[n, 1e3 * s, 1 / s] for n, s in rows])
    ratio_line(
        "data_path_per_core",
        per["reference"] / per["ours"],
        "reference-style PIL transforms + per-pixel Python label remap",
        3,
    )


if __name__ == "__main__":
    main()
