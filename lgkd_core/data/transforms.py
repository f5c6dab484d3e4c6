"""Joint image + mask transforms (torchvision.transforms.v2).

Inputs: ``tv_tensors.Image`` uint8 (3, H, W) and ``tv_tensors.Mask`` (H, W). v2 resizes a
``Mask`` with nearest-neighbour interpolation whatever the image's interpolation, so label values
are never mixed; the mask keeps its dtype (only the image is converted to float and normalised).
Randomness comes from torch's global generator (seeded per sample by the engine).
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
            v2.RandomResizedCrop(
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
            v2.Resize(crop_size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(crop_size),
        ]
    return v2.Compose([*spatial, *_to_normalised_float()])
