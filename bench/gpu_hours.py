"""GPU hours of the paper's comparisons (every method of a setting, one shared step 0, Joint).

hours = sum over jobs of epochs x images of the step / images per second. Images per step: VOC
15-1, 15-5 and 19-1 are the overlap counts of the MiB repository's index files (the same rule as
this pipeline's); VOC 10-1 and ADE20k are estimates (step 0: every training image; later ADE
steps: MiB's partition of the training images, a lower bound for the overlap rule; VOC 10-1 steps
11-15: the mean of 15-1's one-class steps). Throughput: the FLOPs of one training iteration of
DeepLabV3-ResNet-101 at 512x512 are counted here with torch.utils.flop_counter (student forward +
backward, plus the teacher's forward from step 1 on), divided by ``--tflops`` (sustained TFLOP/s
of one GPU; default 0.25 x the 312 TFLOP/s fp16 peak of an A100, an assumption) -- or pass
``--images-per-second`` and ``--images-per-second-step0`` as measured by bench/bench_gpu.py.

    .venv/bin/python bench/gpu_hours.py [--tflops 125] [--methods 11]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from lgkd_core.models import build_model

# (images of step 0, images of each later step), epochs (step 0, later), per setting.
VOC = 10582
SETTINGS = {
    "voc_19-1": ((10410, [548]), (30, 30)),
    "voc_15-5": ((9568, [2145]), (30, 30)),
    "voc_15-1": ((9568, [487, 299, 491, 500, 548]), (30, 30)),
    "voc_10-1": ((VOC, [465] * 5 + [487, 299, 491, 500, 548]), (30, 30)),
    "ade_100-50": ((20210, [6744]), (60, 60)),
    "ade_100-10": ((20210, [1130, 1200, 1366, 1550, 1498]), (60, 60)),
    "ade_50-50": ((20210, [6384, 5593]), (60, 60)),
    "ade_100-5": ((20210, [675] * 10), (60, 60)),
}
JOINT = {"voc": (VOC, 30), "ade": (20210, 60)}


def flops_per_image(crop: int = 512, count_crop: int = 128) -> tuple[float, float]:
    """(student forward + backward, teacher forward) FLOPs per image at ``crop``, counted at
    ``count_crop`` and scaled by the pixel ratio (every layer's cost is linear in the pixels)."""
    torch.manual_seed(0)
    model = build_model("resnet101", [16, 1], norm="abn", output_stride=16).train()
    x = torch.randn(2, 3, count_crop, count_crop)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    train = counter.get_total_flops() / 2
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    scale = (crop / count_crop) ** 2
    return train * scale, counter.get_total_flops() / 2 * scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tflops", type=float, default=0.25 * 312, help="sustained TFLOP/s per GPU")
    p.add_argument("--images-per-second", type=float, help="measured incremental-step rate")
    p.add_argument("--images-per-second-step0", type=float, help="measured step-0 rate")
    p.add_argument("--methods", type=int, default=11, help="methods per setting (Joint apart)")
    args = p.parse_args()
    train, teacher = flops_per_image()
    rate0 = args.images_per_second_step0 or args.tflops * 1e12 / train
    rate = args.images_per_second or args.tflops * 1e12 / (train + teacher)
    print(f"FLOPs per image (counted): train {train / 1e9:.0f} G, teacher {teacher / 1e9:.0f} G")
    print(f"images/s per GPU: step 0 {rate0:.1f}, incremental {rate:.1f}")
    print("setting | step 0 h | one method, steps >= 1 h | all methods + shared step 0 h")
    for name, ((n0, later), (e0, e)) in SETTINGS.items():
        h0 = e0 * n0 / rate0 / 3600
        h1 = sum(e * n for n in later) / rate / 3600
        print(f"{name} | {h0:.1f} | {h1:.1f} | {h0 + args.methods * h1:.1f}")
    for ds, (n, e) in JOINT.items():
        print(f"{ds}_joint | {e * n / rate0 / 3600:.1f} | - | (once per dataset)")


if __name__ == "__main__":
    main()
