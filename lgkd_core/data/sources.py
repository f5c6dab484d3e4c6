"""On-disk layouts of the datasets and the readers of their files.

A :class:`Source` knows, for each split (``train``, ``val``), the image ids in their canonical
order (the order of VOC's list files, sorted file names for ADE20k) and where each image and
mask lives. Masks are read as raw class ids (palette indices, no colour conversion).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file

SPLITS = ("train", "val")

VOC_LISTS = {"train": "list/train_aug.txt", "val": "list/val.txt"}
VOC_IMAGE_BASE = Path("VOCdevkit/VOC2012")
ADE_DIRS = {"train": "training", "val": "validation"}

_VOC_LAYOUT = """\
  <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  <root>/SegmentationClassAug/<id>.png
  <root>/list/train_aug.txt, <root>/list/val.txt
     (lines "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png")"""

_ADE_LAYOUT = """\
  <root>/images/training/<id>.jpg, <root>/images/validation/<id>.jpg
  <root>/annotations/training/<id>.png, <root>/annotations/validation/<id>.png"""


class DataLayoutError(ValueError):
    """A dataset folder is missing or does not have the expected layout."""


class DataFileError(ValueError):
    """One image or mask file is unreadable or has unexpected content."""

    def __init__(self, message: str = "", *args) -> None:
        # A DataLoader worker's exception is raised again in the main process as
        # ``DataFileError("Caught DataFileError in DataLoader worker ...<traceback>")``: keep the
        # original one-line message (it names the file), not the worker's traceback.
        marker = f"{type(self).__name__}: "
        if isinstance(message, str) and message.startswith("Caught ") and marker in message:
            where = message.split("\n", 1)[0].removeprefix(f"Caught {type(self).__name__} ")
            message = f"{message.rsplit(marker, 1)[1].strip()} ({where.rstrip('.')})"
        super().__init__(message, *args)


def _layout_error(dataset: str, root: Path, missing: Path, data_root: Path) -> DataLayoutError:
    if dataset == "synthetic":
        fix = f"python -m lgkd_core synthesize --out {data_root / 'synthetic'}"
    else:
        fix = f"python -m lgkd_core download --dataset {dataset} --data-root {data_root}"
    layout = _ADE_LAYOUT if dataset == "ade" else _VOC_LAYOUT
    return DataLayoutError(
        f"{dataset} dataset: {missing} does not exist.\n"
        f"Expected layout under <root> = {root}:\n{layout}\n"
        f"Create it with: {fix}"
    )


@dataclass
class Source:
    """One dataset on disk: ids and file paths per split (``train``, ``val``)."""

    dataset: str
    root: Path
    data_root: Path
    _entries: dict[str, dict[str, tuple[Path, Path]]] = field(default_factory=dict, repr=False)
    _ids: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def _load(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if split in self._ids:
            return
        pairs = _voc_pairs(self, split) if self.dataset != "ade" else _ade_pairs(self, split)
        self._ids[split] = [i for i, _, _ in pairs]
        self._entries[split] = {i: (img, msk) for i, img, msk in pairs}
        if len(self._entries[split]) != len(self._ids[split]):
            raise DataLayoutError(f"{self.dataset} {split} split lists an image id twice")

    def ids(self, split: str) -> list[str]:
        """Image ids of ``split`` in canonical order (list-file order or sorted names)."""
        self._load(split)
        return list(self._ids[split])

    def _entry(self, split: str, image_id: str) -> tuple[Path, Path]:
        self._load(split)
        try:
            return self._entries[split][image_id]
        except KeyError:
            raise KeyError(
                f"image id {image_id!r} is not in the {self.dataset} {split} split"
            ) from None

    def image_path(self, split: str, image_id: str) -> Path:
        return self._entry(split, image_id)[0]

    def mask_path(self, split: str, image_id: str) -> Path:
        return self._entry(split, image_id)[1]


def _require(source: Source, path: Path) -> None:
    if not path.exists():
        raise _layout_error(source.dataset, source.root, path, source.data_root)


def _voc_pairs(source: Source, split: str) -> list[tuple[str, Path, Path]]:
    root = source.root
    for sub in (VOC_IMAGE_BASE / "JPEGImages", Path("SegmentationClassAug"), Path("list")):
        _require(source, root / sub)
    list_file = root / VOC_LISTS[split]
    _require(source, list_file)
    pairs = []
    for n, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DataLayoutError(
                f"{list_file}:{n}: expected '<image path> <mask path>', got {line!r}"
            )
        image_rel, mask_rel = (p.lstrip("/") for p in parts)
        pairs.append((Path(image_rel).stem, root / VOC_IMAGE_BASE / image_rel, root / mask_rel))
    return pairs


def _ade_pairs(source: Source, split: str) -> list[tuple[str, Path, Path]]:
    root = source.root
    image_dir = root / "images" / ADE_DIRS[split]
    mask_dir = root / "annotations" / ADE_DIRS[split]
    _require(source, image_dir)
    _require(source, mask_dir)
    stems = sorted(p.stem for p in image_dir.glob("*.jpg"))
    return [(s, image_dir / f"{s}.jpg", mask_dir / f"{s}.png") for s in stems]


_ROOTS = {"voc": "PascalVOC2012", "synthetic": "synthetic", "ade": "ADEChallengeData2016"}


def open_source(dataset: str, data_root: Path | str) -> Source:
    """The dataset ``dataset`` (``voc``, ``synthetic``, ``ade``) under ``data_root``.

    Raises :class:`DataLayoutError` naming the missing path and the command that creates it.
    """
    if dataset not in _ROOTS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(_ROOTS)}")
    data_root = Path(data_root)
    source = Source(dataset, data_root / _ROOTS[dataset], data_root)
    _require(source, source.root)
    return source


# -- file readers ----------------------------------------------------------------------------
def read_mask(path: Path | str) -> np.ndarray:
    """Raw class ids of a label PNG: uint8 (H, W). Palette/grey masks only, no colour mapping."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataFileError(
                    f"mask {path} has PIL mode {img.mode!r}; expected a palette ('P') or "
                    "greyscale ('L') PNG holding class ids"
                )
            mask = np.asarray(img, dtype=np.uint8)
    except DataFileError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise DataFileError(f"cannot read mask {path}: {e}; replace the file") from e
    return mask


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError) as e:
        raise DataFileError(f"cannot read image {path}: {e}; replace the file") from e


def read_image(path: Path | str) -> torch.Tensor:
    """RGB image as uint8 (3, H, W): libjpeg via torchvision for JPEG, PIL otherwise."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            # torchvision 0.29 deprecates its image codecs (for TorchCodec) but they still work
            # and are the fastest JPEG decoder available here; silence the per-call warning.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
        with Image.open(path) as img:
            arr = np.array(img.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    except (OSError, ValueError, SyntaxError, RuntimeError) as e:
        raise DataFileError(f"cannot read image {path}: {e}; replace the file") from e
