"""Streaming confusion matrix on the device and the paper's mIoU summaries.

Channels are model ids: channel ``k`` of a step-``t`` model is class ``task.order(t)[k]``.
IoU of a class = tp / (gt + pred - tp); classes without ground-truth pixels get NaN and are left
out of every mean (the reference reports them as "X" and excludes them).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from lgkd_core.tasks import Task

_CPU_CHUNK = 1 << 18  # pixels per bincount on CPU (buffers of 1-2 MiB)
_NARROW = (torch.uint8, torch.int8, torch.int16, torch.int32)


def _nanmean(values: torch.Tensor) -> float:
    """Mean of the non-NaN entries; NaN when there are none."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


class ConfusionMatrix:
    """``matrix``: int64 (C, C), rows = ground truth, columns = prediction."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``pred``, ``target`` integer tensors of the same shape, e.g. (B, H, W).

        Pixels whose target is ``ignore_index``, negative or >= ``num_classes`` are skipped.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        n = self.num_classes
        target = target.reshape(-1)
        pred = pred.reshape(-1).to(target.device)
        if pred.is_floating_point():
            pred = pred.long()
        if target.is_floating_point():
            target = target.long()
        if not target.numel():
            return
        # Why no boolean gather of the counted pixels: on CPU it cost 4x numpy's per-image update.
        # Targets are clamped to -1..n, so skipped pixels land in rows -1 and n of the count,
        # which are dropped; int32 index maths in two reused buffers (clamping before the cast,
        # so no value wraps), by CPU chunks of 2**18 pixels that stay in cache; one chunk on GPUs.
        dev = target.device
        chunk = min(_CPU_CHUNK if dev.type == "cpu" else target.numel(), target.numel())
        dtype = torch.int32 if (n + 2) * n < 2**31 else torch.int64
        row_buf = torch.empty(chunk, dtype=dtype, device=dev)
        pred_buf = torch.empty(chunk, dtype=dtype, device=dev)
        wide = target.dtype not in _NARROW and dtype != torch.int64
        wide_buf = torch.empty(chunk, dtype=target.dtype, device=dev) if wide else None
        counts = torch.zeros((n + 2) * n, dtype=torch.int64, device=dev)
        for t, p in zip(target.split(chunk), pred.split(chunk), strict=True):
            lo, hi = torch.aminmax(p)
            if bool((lo < 0) | (hi >= n)):  # refused where counted, else kept off the matrix
                keep = (t >= 0) & (t < n) & (t != self.ignore_index)
                if bool(((p < 0) | (p >= n))[keep].any()):
                    raise ValueError(f"pred holds class ids outside 0..{n - 1} (num_classes = {n})")
                p = p.clamp(0, n - 1)
            k = t.numel()
            row, p_cast = row_buf[:k], pred_buf[:k].copy_(p)
            if wide_buf is not None:
                row.copy_(torch.clamp(t, -1, n, out=wide_buf[:k]))
            else:
                row.copy_(t).clamp_(-1, n)
            if 0 <= self.ignore_index < n:
                row.masked_fill_(t == self.ignore_index, -1)
            torch.add(p_cast, row, alpha=n, out=row).add_(n)  # (row + 1) * n + pred, >= 0
            counts += torch.bincount(row, minlength=(n + 2) * n)
        self.matrix += counts[n : n * (n + 1)].view(n, n)

    def all_reduce(self) -> None:
        """Sum the matrices of all torch.distributed ranks (no-op when not initialised)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    # -- scores (float64, on the matrix's device) -----------------------------------------------
    def _parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.matrix.double()
        return m.diagonal(), m.sum(dim=1), m.sum(dim=0)

    def class_iou(self) -> torch.Tensor:
        """(C,) float64: tp / (gt + pred - tp); NaN where the class has no ground-truth pixel."""
        tp, gt, pr = self._parts()
        iou = tp / (gt + pr - tp)
        return torch.where(gt > 0, iou, torch.full_like(iou, math.nan))

    def class_accuracy(self) -> torch.Tensor:
        """(C,) float64: tp / gt; NaN where the class has no ground-truth pixel."""
        tp, gt, _ = self._parts()
        return torch.where(gt > 0, tp / gt, torch.full_like(gt, math.nan))

    def overall_accuracy(self) -> float:
        """Correct pixels over counted pixels (NaN when nothing was counted)."""
        total = int(self.matrix.sum())
        return int(self.matrix.diagonal().sum()) / total if total else math.nan

    def summary(self, task: Task, step: int) -> dict[str, float]:
        """NaN-aware mean IoUs: ``background`` (channel 0), ``old`` (step-0 foreground classes),
        ``old_bg`` (step-0 classes with background), ``new`` (classes added after step 0),
        ``all`` (every seen class with background).
        """
        if task.num_classes(step) != self.num_classes:
            raise ValueError(
                f"the matrix has {self.num_classes} classes but step {step} of "
                f"{task.dataset}/{task.name} has {task.num_classes(step)}"
            )
        iou = self.class_iou().cpu()
        channel = {c: k for k, c in enumerate(task.order(step))}
        base = [channel[c] for c in task.base_classes()]
        n_first = len(task.steps[0])
        new = list(range(n_first, self.num_classes))
        return {
            "background": float(iou[channel[0]]),
            "old": _nanmean(iou[base]),
            "old_bg": _nanmean(iou[[channel[0], *base]]),
            "new": _nanmean(iou[new]),
            "all": _nanmean(iou),
        }

    def to_dict(self, task: Task, step: int) -> dict:
        """JSON-ready: confusion matrix (nested lists), per-class IoU and accuracy by class name
        (None for NaN), overall accuracy and the summary.
        """
        names = task.channel_names(step)

        def clean(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        iou = self.class_iou().cpu().tolist()
        acc = self.class_accuracy().cpu().tolist()
        return {
            "confusion_matrix": self.matrix.cpu().tolist(),
            "class_iou": {name: clean(v) for name, v in zip(names, iou, strict=True)},
            "class_accuracy": {name: clean(v) for name, v in zip(names, acc, strict=True)},
            "overall_accuracy": clean(self.overall_accuracy()),
            "summary": {k: clean(v) for k, v in self.summary(task, step).items()},
        }
