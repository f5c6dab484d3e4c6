"""Image + mask pairs of one split, labels in model ids, transformed jointly."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from lgkd_core.data.labels import remap
from lgkd_core.data.sources import DataFileError, Source, read_image, read_mask


class SegmentationDataset(Dataset):
    """Item ``k``: ``(image float32 (3, H, W) normalised, mask int64 (H, W) in model ids)``.

    The lookup table ``lut`` (uint8 (256,), see :mod:`lgkd_core.data.labels`) is applied once,
    to the uint8 mask *before* the spatial transform: masks are only resized with nearest
    interpolation (never blended) and never padded by these transforms, so this equals remapping
    afterwards, on fewer or as many pixels.
    """

    def __init__(
        self,
        source: Source,
        split: str,
        ids: Sequence[str],
        lut: np.ndarray,
        transform: Callable | None,
    ) -> None:
        self.source = source
        self.split = split
        self.ids = list(ids)
        self.lut = np.asarray(lut, dtype=np.uint8)
        if self.lut.shape != (256,):
            raise ValueError(f"lut must have shape (256,), got {self.lut.shape}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.ids[index]
        image_path = self.source.image_path(self.split, image_id)
        mask_path = self.source.mask_path(self.split, image_id)
        image = read_image(image_path)
        mask = remap(read_mask(mask_path), self.lut)
        if tuple(image.shape[1:]) != mask.shape:
            raise DataFileError(
                f"image {image_path} is {tuple(image.shape[1:])} (H, W) but its mask {mask_path} "
                f"is {mask.shape}; they must match"
            )
        sample = (tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(mask)))
        if self.transform is not None:
            sample = self.transform(*sample)
        image_out, mask_out = sample
        if image_out.dtype == torch.uint8:  # no transform converted it
            image_out = image_out.float().div_(255)
        return image_out.as_subclass(torch.Tensor), mask_out.as_subclass(torch.Tensor).long()
