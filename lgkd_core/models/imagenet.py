"""How step 0's backbone starts: In-Place ABN ImageNet weights, torchvision's ImageNet weights,
a backbone checkpoint file, or random weights (:func:`init_backbone`).

``pretrained: torchvision`` reads torchvision's ``IMAGENET1K_V1`` weights of ResNet-18/34/50/101
through its weight enums (``torchvision.models.ResNet101_Weights.IMAGENET1K_V1``...), from
torchvision's cache (``$TORCH_HOME/hub/checkpoints``, downloaded there once, hash-checked) and
renames them to this project's backbone (:func:`torchvision_key`): ``conv1``/``bn1`` ->
``mod1.conv1``/``mod1.bn1``; ``layer{i}.{j}.conv{k}``/``bn{k}`` ->
``mod{i+1}.block{j+1}.convs.conv{k}``/``bn{k}``; ``downsample.0``/``downsample.1`` ->
``proj_conv``/``proj_bn``; the classifier ``fc`` is dropped. Only full-width networks have such
weights; the reduced ``_w<width>`` backbones are refused.

What differs from what those weights were trained with:

* activation: torchvision trained with BatchNorm followed by ReLU; here every norm layer is ABN
  followed by leaky ReLU (slope 0.01), as in the In-Place ABN weights. Negative pre-activations
  are scaled by 0.01 instead of zeroed, so the ImageNet features come out slightly different
  until step 0's training adapts them.
* stride: none. torchvision's bottleneck is "ResNet v1.5" (the stride of a block sits on its
  3x3 convolution, not on the first 1x1), and so is this backbone (and In-Place ABN's): the same
  convolution downsamples. The basic blocks (ResNet-18/34) stride their first 3x3 in both.
* dilation: at output stride 16 (8) the last stage (two stages) keeps its resolution with
  dilated 3x3 convolutions instead of a stride, as for every ImageNet start of a segmenter; the
  weights are the same tensors.
"""

from __future__ import annotations

import logging
import re
import urllib.error
from pathlib import Path

from lgkd_core.data.pretrained import IABN_MD5, check_md5, iabn_path, is_iabn_file
from lgkd_core.models.segmenter import (
    IncrementalSegmenter,
    load_backbone_state,
    load_imagenet_backbone,
)

log = logging.getLogger("lgkd_core.pretrained")

TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
}
# How a step-0 model started (``init`` in model.pt and metrics.json).
INIT_IABN = "imagenet-iabn"
INIT_TORCHVISION = "imagenet-torchvision"
INIT_RANDOM = "random"
INIT_CHECKPOINT = "checkpoint"

_STEM = re.compile(r"^(conv1|bn1)\.(\w+)$")
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.(\w+)$")
_SHORTCUT = {"downsample.0": "proj_conv", "downsample.1": "proj_bn"}


def torchvision_key(key: str) -> str | None:
    """This backbone's name for torchvision ResNet parameter ``key`` (None: the classifier)."""
    if key.startswith("fc."):
        return None
    if m := _STEM.match(key):
        return f"mod1.{m[1]}.{m[2]}"
    if m := _BLOCK.match(key):
        layer = _SHORTCUT.get(m[3], f"convs.{m[3]}")
        return f"mod{int(m[1]) + 1}.block{int(m[2]) + 1}.{layer}.{m[4]}"
    raise ValueError(f"unexpected torchvision ResNet parameter {key!r}")


def torchvision_weights(backbone: str):
    """The ``IMAGENET1K_V1`` weights enum of ``backbone`` (full-width ResNets only)."""
    if backbone not in TORCHVISION_WEIGHTS:
        raise ValueError(
            f"pretrained: torchvision has ImageNet weights for {', '.join(TORCHVISION_WEIGHTS)} "
            f"only (full width), not for backbone {backbone!r}; use pretrained: none or a "
            "backbone checkpoint file"
        )
    import torchvision.models

    return getattr(torchvision.models, TORCHVISION_WEIGHTS[backbone]).IMAGENET1K_V1


def load_torchvision_backbone(model: IncrementalSegmenter, backbone: str) -> str:
    """Load torchvision's ImageNet weights of ``backbone`` into ``model.body``; returns the
    weights' name (e.g. ``ResNet101_Weights.IMAGENET1K_V1``)."""
    weights = torchvision_weights(backbone)
    import torch.hub

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        state = weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError) as err:
        raise FileNotFoundError(
            f"torchvision's ImageNet weights {weights} are not in its cache ({cached}) and could "
            f"not be downloaded from {weights.url} ({err}); download that file by hand and "
            f"place it at {cached} (TORCH_HOME sets the cache folder)"
        ) from None
    mapped = {}
    for key, value in state.items():
        name = torchvision_key(key)
        if name is not None:
            mapped[name] = value
    load_backbone_state(model, mapped, f"torchvision {weights} ({cached})")
    return str(weights)


def init_backbone(
    model: IncrementalSegmenter,
    pretrained: str | Path | None,
    *,
    backbone: str,
    data_root: str | Path,
    md5: str | None = None,
    announce: bool = True,
) -> tuple[str, str | None]:
    """Start ``model.body`` as ``pretrained`` says; returns (``init``, where the weights came from).

    ``pretrained``: ``iabn`` (``<data_root>/pretrained/resnet101_iabn_sync.pth.tar``),
    ``torchvision``, ``none`` (or None: random weights, with a warning when ``announce``) or a
    backbone checkpoint path. The In-Place ABN file (``iabn``, or any file of its name) must have
    MD5 ``md5`` (default: the published one), checked before anything is loaded; another file
    is checked only when ``md5`` is given.
    """
    value = "none" if pretrained is None else str(pretrained)
    if value == "none":
        if announce:
            log.warning(
                "step 0 starts from RANDOM weights (pretrained: none): no ImageNet "
                "initialisation, so results are far below the paper's; the paper starts from "
                "the In-Place ABN ImageNet ResNet-101 (pretrained: iabn)"
            )
        return INIT_RANDOM, None
    if value == "torchvision":
        name = load_torchvision_backbone(model, backbone)
        if announce:
            log.info("backbone initialised from torchvision's %s", name)
        return INIT_TORCHVISION, name
    # A backbone other than the file's fails the strict load below, naming the mismatch (the
    # workflow refuses iabn for other backbones before any job).
    path = iabn_path(data_root) if value == "iabn" else Path(value)
    init = INIT_IABN if value == "iabn" or is_iabn_file(path) else INIT_CHECKPOINT
    if init == INIT_IABN or md5:
        check_md5(path, md5 or IABN_MD5)
    load_imagenet_backbone(model, path)
    if announce:
        log.info("backbone initialised from %s (%s)", path, init)
    return init, str(path)
