"""Full LGKD training step on CPU, small model: images/s for precision, memory format, teacher mode.

The step is the trainer's (``bench/train_step.py``: frozen teacher forward with features,
student forward with features, ``step_losses`` with the LGKD preset, backward, SGD).
Model: the embedded default's (config.yaml ``dataset_defaults.synthetic``): resnet18_w0.25,
head 64, output stride 8, ``abn``; VOC 15-1 step 1 (16 old + 1 new classes), batch 16, crop 64.
Inputs: seeded random tensors (normalised images, labels with background, the new class and
255 borders), not decoded files: this measures the compute step only (the data path has its own
bench). One process, ``--threads`` torch threads (1 by default, as the workflow runs two
incremental jobs side by side on 2 cores).

Variants: fp32 vs bf16 autocast (``torch.autocast("cpu")``, norms in fp32), channels_last vs
contiguous, teacher under ``torch.no_grad`` (the trainer's), ``torch.inference_mode`` or grad
mode left on (its parameters stay frozen). Baseline of every ratio: fp32, contiguous, no_grad.
Targets >= 1 mean "the option is a speed-up here".
"""

from __future__ import annotations

from pathlib import Path

import torch
from common import parse_args, print_machine, print_table, ratio_line, set_threads, time_calls
from train_step import TrainStep

ARCH = {"backbone": "resnet18_w0.25", "norm": "abn", "output_stride": 8, "head_channels": 64}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


VARIANTS = {
    # name: (bf16, channels_last, teacher mode)
    "fp32 contiguous no_grad": (False, False, "no_grad"),
    "fp32 contiguous inference_mode": (False, False, "inference_mode"),
    "fp32 contiguous grad_enabled": (False, False, "grad_enabled"),
    "fp32 channels_last no_grad": (False, True, "no_grad"),
    "bf16 contiguous no_grad": (True, False, "no_grad"),
    "bf16 channels_last no_grad": (True, True, "no_grad"),
}
BASE = "fp32 contiguous no_grad"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    set_threads(args.threads)
    batch, crop, repeats = (4, 64, 2) if args.quick else (16, 64, 10)
    print_machine(f"bench_train_cpu: LGKD step, {ARCH['backbone']}, batch {batch}, crop {crop}")
    print(f"cpu flags: {cpu_flags()}; inputs: random tensors (no file decoding)")
    steps, errors = {}, {}
    for name, (bf16, cl, teacher) in VARIANTS.items():
        try:
            run = TrainStep(ARCH, batch, crop, "bf16" if bf16 else None, cl, teacher)
            loss = run.step()
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss {float(loss)}")
            steps[name] = run.step
        except RuntimeError as e:  # a variant that cannot run is reported, not hidden
            errors[name] = str(e).splitlines()[0]
    times = time_calls(steps, repeats=repeats, warmup=1)
    rows = [[n, 1e3 * t.median, batch / t.median] for n, t in times.items()]
    rows += [[n, "error", e] for n, e in errors.items()]
    print_table(["variant", "ms/step", "images/s"], rows)
    base = times[BASE].median
    for name, label in [
        ("fp32 contiguous inference_mode", "train_cpu_teacher_inference_mode"),
        ("fp32 channels_last no_grad", "train_cpu_channels_last"),
        ("bf16 contiguous no_grad", "train_cpu_bf16"),
        ("bf16 channels_last no_grad", "train_cpu_bf16_channels_last"),
    ]:
        if name in times:
            ratio_line(label, base / times[name].median, f"{BASE} (the trainer's CPU default)", 1)
        else:
            print(f"RATIO {label}: n/a vs {BASE} (variant failed: {errors[name]})")
    grad = "fp32 contiguous grad_enabled"
    if grad in times:  # what the no_grad context saves over leaving grad mode on
        ratio_line("train_cpu_teacher_no_grad", times[grad].median / base, grad, 1)


if __name__ == "__main__":
    main()
