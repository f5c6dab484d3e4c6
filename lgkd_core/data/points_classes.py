"""Class lists of the two indoor point-cloud datasets, in the 3DPC-CISS protocol's order.

The index of a name in its tuple is the label stored in the blocks (column 6 of each N x 7
array). ScanNet's order is the protocol's own, not the nyu40 id order; index 0, ``unannotated``,
collects every raw label outside the other 20 names.
"""

from __future__ import annotations

SCANNET_CLASSES: tuple[str, ...] = (
    "unannotated",
    "wall",
    "floor",
    "chair",
    "table",
    "desk",
    "bed",
    "bookshelf",
    "sofa",
    "sink",
    "bathtub",
    "toilet",
    "curtain",
    "counter",
    "door",
    "window",
    "shower curtain",
    "refrigerator",
    "picture",
    "cabinet",
    "otherfurniture",
)

S3DIS_CLASSES: tuple[str, ...] = (
    "ceiling",
    "floor",
    "wall",
    "beam",
    "column",
    "window",
    "door",
    "table",
    "chair",
    "sofa",
    "bookcase",
    "board",
    "clutter",
)

POINT_CLASSES: dict[str, tuple[str, ...]] = {"scannet": SCANNET_CLASSES, "s3dis": S3DIS_CLASSES}
