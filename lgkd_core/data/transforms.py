"""Joint image + mask transforms (torchvision.transforms.v2).

Inputs: ``tv_tensors.Image`` uint8 (3, H, W) and ``tv_tensors.Mask`` (H, W). The image is
resized bilinearly, the mask with nearest-neighbour, so label values are never mixed; the mask
keeps its dtype (only the image is converted to float and normalised). Randomness comes from
torch's global generator (seeded per sample by the engine).

Why the two subclasses: v2 resizes a ``Mask`` with torch's legacy ``nearest`` (source pixel
``floor(dst * scale)``), which is shifted by up to half a source pixel against the bilinear image
(pixel centres). ``NEAREST_EXACT`` samples pixel centres, like PIL's NEAREST in the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resize_mask_exact(mask: tv_tensors.Mask, size: list[int], max_size=None) -> tv_tensors.Mask:
    out = F.resize_mask(
        mask.as_subclass(torch.Tensor),
        size,
        interpolation=InterpolationMode.NEAREST_EXACT,
        max_size=max_size,
    )
    return tv_tensors.wrap(out, like=mask)


class RandomResizedCrop(v2.RandomResizedCrop):
    """v2.RandomResizedCrop with pixel-centre nearest resizing of masks."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return _resize_mask_exact(F.crop(inpt, **params), self.size)
        return super().transform(inpt, params)


class Resize(v2.Resize):
    """v2.Resize with pixel-centre nearest resizing of masks."""

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return _resize_mask_exact(inpt, self.size, self.max_size)
        return super().transform(inpt, params)


def _to_normalised_float() -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transform(crop_size: int) -> v2.Compose:
    """Reference training augmentation: random resized crop (area 0.5-2.0 of the image, aspect
    3/4-4/3, resized to ``crop_size`` squared), horizontal flip, float, ImageNet normalisation.
    """
    return v2.Compose(
        [
            RandomResizedCrop(
                crop_size,
                scale=(0.5, 2.0),
                ratio=(3 / 4, 4 / 3),
                interpolation=v2.InterpolationMode.BILINEAR,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(p=0.5),
            *_to_normalised_float(),
        ]
    )


def eval_transform(crop_size: int | None) -> v2.Compose:
    """Shorter side resized to ``crop_size`` then centre crop; ``None``: the full image."""
    spatial: list[v2.Transform] = []
    if crop_size is not None:
        spatial = [
            Resize(crop_size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(crop_size),
        ]
    return v2.Compose([*spatial, *_to_normalised_float()])
