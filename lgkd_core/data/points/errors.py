"""Errors and warnings of the point-cloud readers, and the texts they share."""

from __future__ import annotations

from pathlib import Path


class PointDataError(ValueError):
    """A raw point-cloud folder or file is missing or does not have the expected content."""


class PointDataWarning(UserWarning):
    """Data read with a repair or a gap: a subset of scenes, a stripped NUL byte, a skipped line."""


SCANNET_LAYOUT = """\
  <source>/scans/<scene>/<scene>_vh_clean_2.ply                (binary PLY: x y z red green blue)
  <source>/scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json (segIndices)
  <source>/scans/<scene>/<scene>.aggregation.json              (segGroups[].segments, .label)
  <source>/scannetv2-labels.combined.tsv                       (columns raw_category, nyu40class)
  <source>/scannetv2_train.txt, <source>/scannetv2_val.txt     (optional: scene lists)"""

S3DIS_LAYOUT = """\
  <source>/Stanford3dDataset_v1.2_Aligned_Version/Area_<i>/<room>/Annotations/<class>_<k>.txt
     (or <source> is that folder itself; each line "x y z r g b")"""

SCANNET_REQUEST = (
    "ScanNet v2 cannot be redistributed: fill out the ScanNet Terms of Use form and e-mail it to "
    "scannet@googlegroups.com (see github.com/ScanNet/ScanNet); the reply brings a download "
    "script. Only the files listed above are needed (no .sens streams)."
)

S3DIS_REQUEST = (
    "S3DIS cannot be redistributed: request Stanford3dDataset_v1.2_Aligned_Version.zip through "
    "the Stanford form https://goo.gl/forms/4SoGp4KtH1jfRqEj2 and unzip it."
)

_TEXTS = {"scannet": (SCANNET_LAYOUT, SCANNET_REQUEST), "s3dis": (S3DIS_LAYOUT, S3DIS_REQUEST)}


def layout_error(dataset: str, path: Path | str, problem: str) -> PointDataError:
    """A folder-level error: what is wrong, with the path, the expected layout and how to get
    the data."""
    layout, request = _TEXTS[dataset]
    return PointDataError(f"{dataset}: {problem}: {path}\nExpected layout:\n{layout}\n{request}")


def file_error(dataset: str, path: Path | str, problem: str) -> PointDataError:
    """A file-level error: the file exists but its content is not what the format says."""
    return PointDataError(
        f"{dataset}: {path}: {problem}. The file looks damaged or truncated: extract or "
        "download it again."
    )
