"""Cutting a scene into 1 m x 1 m x-y blocks, and the class-to-blocks selection rule.

The tiling follows the 3DPC-CISS protocol: the scene is shifted so that its xyz minimum is the
origin, block ``(i, j)`` covers ``i*s <= x <= i*s + s`` and ``j*s <= y <= j*s + s`` (``s`` the
block size, also the stride) over the full height, and blocks with fewer than ``min_points``
points are dropped. The intervals are closed at both ends, as in the protocol, so a point lying
exactly on a shared edge belongs to both blocks. Blocks are taken x-major (``i`` outer, ``j``
inner) and the kept ones are numbered 0, 1, 2, ... in that order: the numbers have no gaps and
do not encode the grid position.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK_SIZE = 1.0
MIN_POINTS = 1000
# class2blocks rule: a block holds a class when it has more than max(5 % of its points, 100)
# points of it.
CLASS_MIN_POINTS = 100
CLASS_MIN_SHARE = 20  # 1 / 0.05, kept integral so the boundary is exact


def _cells(coord: np.ndarray, n: int, size: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """For one axis, the (cell index, member mask) pairs of every point's candidate cells.

    A point's lower cell is floor(coord / size); the closed intervals may also put it in the
    cell below (on an edge), and the cell above is tested too so float rounding of the
    division cannot lose a point."""
    base = np.clip(np.floor(coord / size).astype(np.int64), 0, n - 1)
    out = []
    for d in (-1, 0, 1):
        k = base + d
        lo = k * size
        ok = (k >= 0) & (k < n) & (coord >= lo) & (coord <= lo + size)
        out.append((k, ok))
    return out


def split_blocks(
    points: np.ndarray, block_size: float = BLOCK_SIZE, min_points: int = MIN_POINTS
) -> list[np.ndarray]:
    """Cut a scene into blocks.

    points: (N, 7) ``[x, y, z, r, g, b, label]``, any float dtype, xyz in metres.
    Returns the kept blocks in number order, each (n_i, 7) float32 with the scene-shifted xyz
    (the shift is computed in float64) and the points in their scene order.
    """
    if points.ndim != 2 or points.shape[1] != 7:
        raise ValueError(f"points must be (N, 7), got {points.shape}")
    if len(points) == 0:
        return []
    data = np.array(points, dtype=np.float64)
    data[:, :3] -= data[:, :3].min(axis=0)
    top = data[:, :2].max(axis=0)
    # The protocol's grid size; at least one cell even for a scene of zero extent.
    nx, ny = (max(1, math.ceil((float(t) - block_size) / block_size) + 1) for t in top)

    cells, members = [], []
    index = np.arange(len(data))
    for kx, okx in _cells(data[:, 0], nx, block_size):
        for ky, oky in _cells(data[:, 1], ny, block_size):
            ok = okx & oky
            cells.append(kx[ok] * ny + ky[ok])
            members.append(index[ok])
    cell = np.concatenate(cells)
    member = np.concatenate(members)
    order = np.lexsort((member, cell))
    cell, member = cell[order], member[order]
    _, starts, counts = np.unique(cell, return_index=True, return_counts=True)
    return [
        data[member[a : a + n]].astype(np.float32)
        for a, n in zip(starts.tolist(), counts.tolist(), strict=True)
        if n >= min_points
    ]


def class_points(labels: np.ndarray, num_classes: int) -> list[int]:
    """Points per class of one block. labels: (n,) class indices (any numeric dtype)."""
    return np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes].tolist()


def holds_class(count: int, block_points: int) -> bool:
    """The class2blocks rule: more than max(5 % of the block's points, 100) points."""
    return count > CLASS_MIN_POINTS and count * CLASS_MIN_SHARE > block_points


def class_to_blocks(blocks: list[tuple[str, list[int]]], num_classes: int) -> dict[int, list[str]]:
    """{class index: names of the blocks holding it}, from (name, points per class) pairs, in
    the given block order; every class is a key, empty ones map to []."""
    out: dict[int, list[str]] = {c: [] for c in range(num_classes)}
    for name, counts in blocks:
        total = sum(counts)
        for c, n in enumerate(counts):
            if holds_class(n, total):
                out[c].append(name)
    return out
