"""Segmentation models: ResNet backbones, DeepLabV3 head, incremental classifier, norm layers."""

from lgkd_core.models.deeplab import DeepLabV3
from lgkd_core.models.norm import ABN, NORM_KINDS, BNAct, make_norm, resolve_norm
from lgkd_core.models.resnet import BACKBONES, ResNet, build_backbone, parse_backbone
from lgkd_core.models.segmenter import (
    Features,
    IncrementalSegmenter,
    build_model,
    init_balanced,
    load_imagenet_backbone,
)

__all__ = [
    "ABN",
    "BACKBONES",
    "NORM_KINDS",
    "BNAct",
    "DeepLabV3",
    "Features",
    "IncrementalSegmenter",
    "ResNet",
    "build_backbone",
    "build_model",
    "init_balanced",
    "load_imagenet_backbone",
    "make_norm",
    "parse_backbone",
    "resolve_norm",
]
