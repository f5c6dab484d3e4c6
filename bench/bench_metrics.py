"""Confusion-matrix update per validation batch: on the device vs numpy after a copy to the host.

Ours: ``lgkd_core.metrics.ConfusionMatrix.update(pred, target)`` where the tensors are (one
``bincount`` per batch on their device; the matrix is read once at the end of validation).

Baseline, what the reference does (PLOP ``train.py`` validate + ``metrics/stream_metrics.py``):
``labels.cpu().numpy()``, ``prediction.cpu().numpy()``, then per image a masked ``np.bincount``
added to a float64 matrix.

Batch: 17 classes (VOC 15-1 step 1), predictions and labels (B, 512, 512) int64 with 255 borders.
CPU always; on a CUDA device also, reporting the time saved per validation pass of VOC
(1,449 images at 512x512).
"""

from __future__ import annotations

import numpy as np
import torch
from common import parse_args, print_machine, print_table, ratio_line, set_threads, time_calls

from lgkd_core.metrics import ConfusionMatrix

NUM_CLASSES = 17
VAL_IMAGES = 1449


def make_batch(batch: int, size: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, (batch, size // 16, size // 16), generator=g)
    target = target.repeat_interleave(16, 1).repeat_interleave(16, 2)
    target[:, ::16, :] = 255
    noise = torch.randint(0, NUM_CLASSES, target.shape, generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.8, target, noise)
    pred = torch.where(pred == 255, noise, pred)
    return pred.to(device), target.to(device)


class ReferenceMetrics:
    """Per-image numpy bincount into a float64 matrix (the reference's StreamSegMetrics)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.matrix = np.zeros((n, n))

    def update(self, label_trues: np.ndarray, label_preds: np.ndarray) -> None:
        for lt, lp in zip(label_trues, label_preds, strict=True):
            lt, lp = lt.flatten(), lp.flatten()
            mask = (lt >= 0) & (lt < self.n)
            self.matrix += np.bincount(
                self.n * lt[mask].astype(int) + lp[mask], minlength=self.n**2
            ).reshape(self.n, self.n)


def measure(device: str, batch: int, size: int, repeats: int) -> dict[str, float]:
    """Seconds per batch of each side on ``device`` (and a check that both count the same)."""
    pred, target = make_batch(batch, size, device)
    ours, ref = ConfusionMatrix(NUM_CLASSES, device=device), ReferenceMetrics(NUM_CLASSES)
    ours.update(pred, target)
    ref.update(target.cpu().numpy(), pred.cpu().numpy())
    if not np.array_equal(ours.matrix.cpu().numpy(), ref.matrix.astype(np.int64)):
        raise SystemExit(f"MISMATCH: the two confusion matrices differ on {device}")

    def run_ref():
        labels, prediction = target.cpu().numpy(), pred.cpu().numpy()
        ref.update(labels, prediction)

    sync = torch.cuda.synchronize if device == "cuda" else None
    times = time_calls(
        {"reference": run_ref, "ours": lambda: ours.update(pred, target)},
        repeats=repeats,
        warmup=2,
        sync=sync,
    )
    return {k: t.median for k, t in times.items()}


def report(device: str, t: dict[str, float], batch: int, size: int, target: float) -> None:
    per_image = {k: v / batch for k, v in t.items()}
    print_table(
        ["device", "update", "ms/batch", "ms/image"],
        [
            [device, "reference: .cpu().numpy() + per-image np.bincount", 1e3 * t["reference"],
             1e3 * per_image["reference"]],
            [device, "ours: ConfusionMatrix.update on the device", 1e3 * t["ours"],
             1e3 * per_image["ours"]],
        ],
    )  # fmt: skip
    if size == 512:
        saved = (per_image["reference"] - per_image["ours"]) * VAL_IMAGES
        print(f"{device}: time saved per validation pass ({VAL_IMAGES} images, 512x512): "
              f"{saved:.2f} s")  # fmt: skip
    ratio_line(
        f"metrics_{device}",
        t["reference"] / t["ours"],
        "per-image numpy bincount after a copy to the host",
        target,
    )


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    set_threads(args.threads)
    batch, size, repeats = (2, 128, 5) if args.quick else (8, 512, 15)
    print_machine(f"bench_metrics: confusion matrix update, batch {batch} x {size}x{size}")
    report("cpu", measure("cpu", batch, size, repeats), batch, size, 1.0)
    if torch.cuda.is_available():
        report("cuda", measure("cuda", batch, size, repeats), batch, size, 1.0)
    else:
        print("SKIP gpu: no CUDA device")


if __name__ == "__main__":
    main()
