"""Segmentation models: ResNet backbones, DeepLabV3 head, incremental classifier, norm layers;
DGCNN and its incremental classifier for point clouds."""

from lgkd_core.models.deeplab import DeepLabV3
from lgkd_core.models.dgcnn import (
    DGCNN,
    IncrementalPointSegmenter,
    PointFeatures,
    build_point_model,
)
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
    "DGCNN",
    "NORM_KINDS",
    "BNAct",
    "DeepLabV3",
    "Features",
    "IncrementalPointSegmenter",
    "IncrementalSegmenter",
    "PointFeatures",
    "ResNet",
    "build_backbone",
    "build_model",
    "build_point_model",
    "init_balanced",
    "load_imagenet_backbone",
    "make_norm",
    "parse_backbone",
    "resolve_norm",
]
