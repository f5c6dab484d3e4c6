"""PLOP's local POD (pooled output distillation) on feature maps and low-resolution logits.

For each map pair (teacher ``a``, student ``b``, both (B, C, h, w)): square element-wise, build
the local POD embedding (for every scale s and every one of the s*s cells of side ``k = w // s``:
mean over width and mean over height, concatenated), take the per-image L2 distance between the
teacher's and the student's embeddings, and average it over the batch. The logits map's
student-side new-class channels are first summed into its background *logit* ("sum" mode).
Each term is weighted (``factors``) and scaled by ``sqrt(num_seen / num_new)``; the sum is divided
by the number of maps. As in the reference, a map whose factor is <= 0 adds
nothing but still counts in that denominator. Square maps are assumed, like the reference
(the cell size is taken from the width). fp32 maths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def merge_new_logits(student_logits_small: torch.Tensor, num_old: int) -> torch.Tensor:
    """(B, C_old + C_new, h, w) -> (B, C_old, h, w): channel 0 = bg + sum of new-class logits."""
    z = student_logits_small
    bg = z[:, :1] + z[:, num_old:].sum(dim=1, keepdim=True)
    return torch.cat([bg, z[:, 1:num_old]], dim=1)


def _check_image_map(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"local POD pools image maps (B, C, h, w) along their width and height; got a "
            f"{x.dim()}-D tensor {tuple(x.shape)}. Point clouds (B, C, N) have no such axes: "
            "use a method without POD for them"
        )


def local_pod_embedding(x: torch.Tensor, scales: Sequence[int] = (1, 2, 4)) -> torch.Tensor:
    """(B, C, h, w) -> (B, D) with D = sum_s s*s * C * 2k, k = w // s (cells in row-major order,
    each cell contributing its width-pooled then its height-pooled C*k values)."""
    _check_image_map(x)
    b, c = x.shape[:2]
    w = x.shape[-1]
    if w < max(scales) or x.shape[-2] < w:
        raise ValueError(
            f"local POD needs square maps at least {max(scales)} wide (got {tuple(x.shape)}); "
            "use a larger crop size (the logits are at 1/16 of the input)"
        )
    finest = max(scales)
    if x.shape[-2] == w and w % finest == 0 and all(finest % s == 0 for s in scales):
        return _nested_embedding(x, scales)
    parts = []
    for s in scales:
        k = w // s
        # (B, C, s, k, s, k): cell (i, j) holds rows i*k.. and cols j*k.. (remainder dropped).
        cells = x[..., : s * k, : s * k].reshape(b, c, s, k, s, k)
        width_pool = cells.mean(dim=5).permute(0, 2, 4, 1, 3)  # (B, s_i, s_j, C, k rows)
        height_pool = cells.mean(dim=3).permute(0, 2, 3, 1, 4)  # (B, s_i, s_j, C, k cols)
        parts.append(torch.stack([width_pool, height_pool], dim=3).reshape(b, -1))
    return torch.cat(parts, dim=1)


def _nested_embedding(x: torch.Tensor, scales: Sequence[int]) -> torch.Tensor:
    """:func:`local_pod_embedding` when every cell of every scale is a union of finest cells
    (square map, width divisible by the finest scale, which every scale divides).

    Why: the per-scale means each read (and in backward, write) the whole map; here two means at
    the finest grid do, and every scale is averaged from them (equal-sized blocks, same values).
    """
    b, c, _, w = x.shape
    n = max(scales)
    row_means = x.reshape(b, c, w, n, w // n).mean(dim=4)  # (B, C, rows, n column blocks)
    col_means = x.reshape(b, c, n, w // n, w).mean(dim=3)  # (B, C, n row blocks, cols)
    parts = []
    for s in scales:
        k, f = w // s, n // s
        width_pool = row_means.reshape(b, c, w, s, f).mean(dim=4)  # (B, C, rows, s_j)
        width_pool = width_pool.reshape(b, c, s, k, s).permute(0, 2, 4, 1, 3)
        height_pool = col_means.reshape(b, c, s, f, w).mean(dim=3)  # (B, C, s_i, cols)
        height_pool = height_pool.reshape(b, c, s, s, k).permute(0, 2, 3, 1, 4)
        parts.append(torch.stack([width_pool, height_pool], dim=3).reshape(b, -1))
    return torch.cat(parts, dim=1)


def pod_distance(
    old: torch.Tensor, new: torch.Tensor, scales: Sequence[int] = (1, 2, 4)
) -> torch.Tensor:
    """Batch mean of the per-image L2 distance between local POD embeddings of squared maps."""
    ea = local_pod_embedding(old.float().pow(2), scales)
    eb = local_pod_embedding(new.float().pow(2), scales)
    return torch.linalg.vector_norm(ea - eb, dim=-1).mean()


def pod_loss(
    old_maps: Sequence[torch.Tensor],
    new_maps: Sequence[torch.Tensor],
    factors: Sequence[float],
    num_seen: int,
    num_new: int,
    scales: Sequence[int] = (1, 2, 4),
) -> torch.Tensor:
    """Local POD over matched lists of maps (teacher ``old_maps``, student ``new_maps``).

    A student map with more channels than the teacher's (the logits) is merged with
    :func:`merge_new_logits` using the teacher's channel count. ``factors``: one weight per map.
    Returns ``sum_l factors[l] * sqrt(num_seen / num_new) * d_l / len(maps)``.
    """
    if not (len(old_maps) == len(new_maps) == len(factors)) or not old_maps:
        raise ValueError(
            f"pod_loss needs as many teacher maps, student maps and factors "
            f"(got {len(old_maps)}, {len(new_maps)}, {len(factors)})"
        )
    for x in (*old_maps, *new_maps):
        _check_image_map(x)
    schedule = math.sqrt(num_seen / num_new)
    total = new_maps[0].new_zeros((), dtype=torch.float32)
    for a, b, factor in zip(old_maps, new_maps, factors, strict=True):
        if b.shape[1] != a.shape[1]:
            b = merge_new_logits(b.float(), a.shape[1])
        if a.shape != b.shape:
            raise ValueError(f"POD maps differ in shape: teacher {a.shape}, student {b.shape}")
        if factor <= 0:
            continue
        total = total + factor * pod_distance(a, b, scales) * schedule
    return total / len(old_maps)
