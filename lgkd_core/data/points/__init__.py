"""Point clouds: raw ScanNet v2 and S3DIS scenes -> 1 m x 1 m blocks (3DPC-CISS protocol).

Modules, one job each: :mod:`.scannet` and :mod:`.s3dis` read a raw scene into (N, 7)
``[x, y, z, r, g, b, label]`` points, :mod:`.blocks` cuts a scene into blocks and holds the
class-to-blocks rule, :mod:`.prepare` runs the whole conversion (``prepare-points`` command).
The class lists are in :mod:`lgkd_core.data.points_classes`. Nothing here imports torch.
"""

from lgkd_core.data.points.blocks import class_to_blocks, holds_class, split_blocks
from lgkd_core.data.points.errors import PointDataError, PointDataWarning
from lgkd_core.data.points.prepare import prepare_points

__all__ = [
    "PointDataError",
    "PointDataWarning",
    "class_to_blocks",
    "holds_class",
    "prepare_points",
    "split_blocks",
]
