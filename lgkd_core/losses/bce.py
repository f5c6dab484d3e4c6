"""Binary cross-entropy over one-hot labels with an ignore index (LwF-MC's classification loss).

Every channel is an independent sigmoid: a pixel of class ``y`` wants channel ``y`` on and all
others off. Per pixel the channel losses are summed; pixels labelled ``ignore_index`` contribute
0. The reductions are those of :mod:`lgkd_core.losses.ce` (default ``"all_pixels"``: mean over
all ``B*H*W`` pixels, ignored ones included in the denominator, as the reference's
``BCEWithLogitsLossWithIgnoreIndex(reduction="none")`` followed by ``.mean()``).

Shapes: logits ``(B, C, *)`` (images ``(B, C, H, W)``, point clouds ``(B, C, N)``), labels
``(B, *)`` int64 in ``[0, C)`` or ``ignore_index``. fp32 maths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lgkd_core.losses.ce import _reduce


def bce_with_ignore(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    pixel_weight: torch.Tensor | float | None = None,
    reduction: str = "all_pixels",
) -> torch.Tensor:
    """``sum_c BCEWithLogits(z_c, [y == c])`` per labelled pixel, 0 on ignored ones, reduced.

    Computed without materialising the one-hot target: with ``softplus(z) = log(1 + e^z)``,
    ``BCE(z, t) = softplus(z) - t * z``, so the channel sum is
    ``sum_c softplus(z_c) - z_y``. Returns a scalar (``(B, *)`` with ``reduction="none"``).
    """
    z = logits.float()
    valid = labels != ignore_index
    target = torch.where(valid, labels, torch.zeros_like(labels))
    z_y = z.gather(1, target.unsqueeze(1)).squeeze(1)
    per_pixel = F.softplus(z).sum(dim=1) - z_y
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return _reduce(per_pixel, labels, ignore_index, pixel_weight, reduction)
