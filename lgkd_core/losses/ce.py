"""Classification losses: cross-entropy with an ignore index, and MiB's unbiased cross-entropy.

All maths runs in fp32 (logits are cast with ``.float()``), also under autocast.

Reduction ``"all_pixels"`` is the reference's: per-pixel losses (ignored pixels contribute 0),
optionally multiplied by ``pixel_weight``, then averaged over *all* ``B*H*W`` pixels, ignored
ones included in the denominator (so a batch with many ignored pixels weighs less; kept for
parity with the published numbers). ``"valid_pixels"`` averages over
the non-ignored pixels instead; ``"none"`` returns the per-pixel map ``(B, H, W)``.

Images are (B, C, H, W) logits with (B, H, W) labels; point clouds (B, C, N) with (B, N): every
function takes any trailing shape ``*`` (a point is a pixel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("all_pixels", "valid_pixels", "none")


def _reduce(
    per_pixel: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    pixel_weight: torch.Tensor | float | None,
    reduction: str,
) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)} (got {reduction!r})")
    if pixel_weight is not None:
        per_pixel = per_pixel * pixel_weight
    if reduction == "none":
        return per_pixel
    if reduction == "all_pixels":
        return per_pixel.mean()
    valid = (labels != ignore_index).sum().clamp(min=1)
    return per_pixel.sum() / valid


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    pixel_weight: torch.Tensor | float | None = None,
    reduction: str = "all_pixels",
) -> torch.Tensor:
    """Softmax cross-entropy.

    logits: (B, C, H, W); labels: (B, H, W) int64 in [0, C) or ``ignore_index``;
    pixel_weight: broadcastable to (B, H, W), e.g. the per-image adaptive factor (B, 1, 1).
    Returns a scalar (or (B, H, W) with ``reduction="none"``).
    """
    per_pixel = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return _reduce(per_pixel, labels, ignore_index, pixel_weight, reduction)


def unbiased_log_probs(logits: torch.Tensor, num_old: int) -> torch.Tensor:
    """MiB's log-probabilities: background absorbs every old class.

    logits: (B, C, H, W) with C = num_old + num_new. Returns (B, 1 + num_new, H, W): channel 0 is
    ``logsumexp(z_0..z_{num_old-1}) - logsumexp(z)``, channel ``1 + k`` is
    ``z_{num_old+k} - logsumexp(z)``.
    """
    z = logits.float()
    den = torch.logsumexp(z, dim=1, keepdim=True)
    bg = torch.logsumexp(z[:, :num_old], dim=1, keepdim=True)
    return torch.cat([bg, z[:, num_old:]], dim=1) - den


def unbiased_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_old: int,
    ignore_index: int = 255,
    pixel_weight: torch.Tensor | float | None = None,
    reduction: str = "all_pixels",
) -> torch.Tensor:
    """MiB's unbiased cross-entropy (``UnbiasedCrossEntropy``).

    logits: (B, num_old + num_new, H, W); labels: (B, H, W). Labels below ``num_old`` count as
    background (0); a new class ``c`` is channel ``c - num_old + 1`` of the unbiased output.
    """
    logp = unbiased_log_probs(logits, num_old)
    target = torch.where(labels < num_old, torch.zeros_like(labels), labels - num_old + 1)
    target = torch.where(labels == ignore_index, labels, target)
    per_pixel = F.nll_loss(logp, target, ignore_index=ignore_index, reduction="none")
    return _reduce(per_pixel, labels, ignore_index, pixel_weight, reduction)
