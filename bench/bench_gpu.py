"""GPU training throughput: DeepLabV3-ResNet-101, 512x512, batch 24, LGKD step (VOC 15-1 step 1).

One process on one CUDA device runs the whole batch (the paper's global batch of 24; on 2 GPUs
each would hold 12). The step is ``bench/train_step.py`` (teacher forward, student forward and
backward with the LGKD objective, SGD) on random tensors already on the device: data loading is
excluded (see bench_data_path.py for its rate per core). ``cudnn.benchmark`` is on.

Variants: fp16 (GradScaler) vs bf16 autocast, contiguous vs channels_last, eager vs
``torch.compile`` of student and teacher, In-Place ABN (``iabn``, when the ``inplace_abn`` package
is installed) vs the pure-PyTorch ``abn``. Baseline: the reference-equivalent configuration, eager
fp16, contiguous, In-Place ABN (the reference ran apex O1 with In-Place ABN; ``abn`` when
inplace_abn is missing, printed). Reported per variant: images/s, peak GPU memory, model FLOPs
utilisation = FLOPs of one step (counted with torch.utils.flop_counter) / time / the GPU's dense
fp16/bf16 peak (a table below, or ``--peak-tflops``). Without CUDA it prints SKIP and exits 0.
"""

from __future__ import annotations

import gc
import sys

import torch
from common import parse_args, print_machine, print_table, ratio_line, set_threads, time_calls
from train_step import TrainStep

# Dense fp16/bf16 tensor-core peaks (TFLOP/s, no sparsity), by device-name substring.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L4": 121.0,
    "V100": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():  # first match: "H100 PCIe" before "H100"
        if key in name:
            return value
    return None


def has_inplace_abn() -> bool:
    try:
        import inplace_abn  # noqa: F401
    except ImportError:
        return False
    return True


def step_flops(arch: dict, batch: int, crop: int) -> float:
    """FLOPs of one training step (teacher forward, student forward + backward), eager fp32,
    counted on a batch of 2 and scaled to ``batch`` (every counted op is linear in the batch)."""
    from torch.utils.flop_counter import FlopCounterMode

    run = TrainStep({**arch, "norm": "abn"}, 2, crop, None, device="cuda")
    counter = FlopCounterMode(display=False)
    with counter:
        run.step()
    del run
    return counter.get_total_flops() * batch / 2


def main() -> None:
    def extra(p):
        p.add_argument("--batch", type=int, default=24)
        p.add_argument("--crop", type=int, default=512)
        p.add_argument("--iters", type=int, default=10, help="timed iterations per variant")
        p.add_argument("--peak-tflops", type=float, default=None, help="GPU dense fp16 peak")
        p.add_argument("--no-compile", action="store_true", help="skip torch.compile variants")

    args = parse_args(__doc__.splitlines()[0], extra)
    if not torch.cuda.is_available():
        print(f"SKIP: no CUDA device (torch {torch.__version__}, "
              f"cuda build {torch.version.cuda}); run on a GPU machine: "
              f".venv/bin/python bench/bench_gpu.py")  # fmt: skip
        return
    set_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    batch, crop, iters = (4, 256, 3) if args.quick else (args.batch, args.crop, args.iters)
    print_machine(f"bench_gpu: DeepLabV3-ResNet-101, batch {batch}, crop {crop}, LGKD step")
    arch = {"backbone": "resnet101", "output_stride": 16, "head_channels": 256}
    iabn = has_inplace_abn()
    ref_norm = "iabn" if iabn else "abn"
    print(f"inplace_abn installed: {iabn}; baseline norm: {ref_norm}")
    variants = {
        # name: (amp, channels_last, compile, norm)
        "fp16 contiguous eager (reference-equivalent)": ("fp16", False, False, ref_norm),
        "bf16 contiguous eager": ("bf16", False, False, ref_norm),
        "fp16 channels_last eager": ("fp16", True, False, ref_norm),
        "bf16 channels_last eager": ("bf16", True, False, ref_norm),
    }
    if iabn:
        variants["fp16 contiguous eager, abn"] = ("fp16", False, False, "abn")
        variants["fp16 channels_last eager, abn"] = ("fp16", True, False, "abn")
    if not (args.no_compile or args.quick):  # compiling takes minutes
        variants["fp16 channels_last compile"] = ("fp16", True, True, ref_norm)
        variants["bf16 channels_last compile"] = ("bf16", True, True, ref_norm)
        if iabn:  # In-Place ABN's custom kernels break the compiled graph; compare with abn
            variants["bf16 channels_last compile, abn"] = ("bf16", True, True, "abn")
    base_name = next(iter(variants))

    flops = step_flops(arch, batch, crop)
    peak = args.peak_tflops or peak_tflops(torch.cuda.get_device_name(0))
    print(f"FLOPs per step: {flops / 1e12:.2f} TFLOP; peak used for MFU: "
          f"{f'{peak:g} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")  # fmt: skip
    rows, seconds = [], {}
    for name, (amp, cl, comp, norm) in variants.items():
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            run = TrainStep(
                {**arch, "norm": norm}, batch, crop, amp, cl, device="cuda", compile=comp
            )
            if not torch.isfinite(run.step()):
                raise RuntimeError("non-finite loss")
            t = time_calls({name: run.step}, repeats=iters, warmup=3, sync=torch.cuda.synchronize)
            seconds[name] = t[name].median
            mem = torch.cuda.max_memory_allocated() / 2**30
            mfu = f"{100 * flops / seconds[name] / (peak * 1e12):.1f}%" if peak else "n/a"
            rows.append([name, batch / seconds[name], mem, mfu])
        except Exception as e:  # OOM, a compile or kernel failure: report, go on
            rows.append([name, "failed", str(e).splitlines()[0][:60], ""])
        finally:
            run = None
            gc.collect()
    print_table(["variant", "images/s", "peak GiB", "MFU"], rows)
    if base_name not in seconds and "fp16 contiguous eager, abn" in seconds:
        print(f"baseline {base_name!r} failed; using the same configuration with abn")
        base_name = "fp16 contiguous eager, abn"
    if base_name not in seconds:
        print(f"baseline {base_name!r} failed; no ratios")
        sys.exit(1)
    base = seconds[base_name]
    best = min(seconds, key=seconds.get)
    ratio_line("gpu_best", base / seconds[best], f"{base_name}; best = {best}", 1.5)
    for name in seconds:
        if name != base_name:
            label = "gpu_" + name.replace(",", "").replace(" ", "_")
            ratio_line(label, base / seconds[name], base_name, 1)


if __name__ == "__main__":
    main()
