"""ResNet backbones (reference layout: ``mod1`` stem, ``mod2..mod5`` residual stages).

Parameter names equal the In-Place ABN ImageNet checkpoints: ``mod1.conv1.weight``,
``mod1.bn1.*``, ``mod2.block1.convs.conv1.weight``, ``mod2.block1.convs.bn1.*``,
``mod2.block1.proj_conv.weight``, ``mod2.block1.proj_bn.*``, ...

The stride of a block sits on its (first) 3x3 convolution; output stride 16 uses dilations
(1, 1, 1, 2) for ``mod2..mod5``, output stride 8 uses (1, 1, 2, 4). A stage returns its
activated output and the pre-activation sum of its last block (the POD taps).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lgkd_core.models.norm import make_norm

SLOPE = 0.01
DILATIONS = {16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}
BACKBONES = ("resnet101", "resnet50", "resnet34", "resnet18", "resnet18_w<f>", "resnet34_w<f>")


@dataclass(frozen=True)
class ResNetSpec:
    blocks: tuple[int, int, int, int]
    bottleneck: bool
    width: float = 1.0


_SPECS = {
    "resnet101": ResNetSpec((3, 4, 23, 3), True),
    "resnet50": ResNetSpec((3, 4, 6, 3), True),
    "resnet34": ResNetSpec((3, 4, 6, 3), False),
    "resnet18": ResNetSpec((2, 2, 2, 2), False),
}
_WIDTH_RE = re.compile(r"^(resnet18|resnet34)_w(\d+(?:\.\d*)?|\.\d+)$")


def parse_backbone(name: str) -> ResNetSpec:
    """The spec of backbone ``name``: one of ``BACKBONES`` (``<f>``: a width multiplier)."""
    if name in _SPECS:
        return _SPECS[name]
    match = _WIDTH_RE.match(name)
    if match and float(match.group(2)) > 0:
        base = _SPECS[match.group(1)]
        return ResNetSpec(base.blocks, base.bottleneck, float(match.group(2)))
    raise ValueError(
        f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} "
        "(<f> a positive width multiplier, e.g. resnet18_w0.25)"
    )


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width))


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    pad = dilation * (k - 1) // 2
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False)


class ResidualBlock(nn.Module):
    """Bottleneck (``channels`` of length 3) or basic (length 2) residual block.

    x: (B, in_channels, H, W) -> (B, channels[-1], H/stride, W/stride); with ``last=True`` the
    pair (activated output, pre-activation sum).
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...],
        norm: str,
        stride: int = 1,
        dilation: int = 1,
        last: bool = False,
    ) -> None:
        super().__init__()
        if len(channels) == 3:
            c1, c2, c3 = channels
            layers = [
                ("conv1", _conv(in_channels, c1, 1)),
                ("bn1", make_norm(norm, c1)),
                ("conv2", _conv(c1, c2, 3, stride, dilation)),
                ("bn2", make_norm(norm, c2)),
                ("conv3", _conv(c2, c3, 1)),
                ("bn3", make_norm(norm, c3, activation="identity")),
            ]
        elif len(channels) == 2:
            c1, c2 = channels
            layers = [
                ("conv1", _conv(in_channels, c1, 3, stride, dilation)),
                ("bn1", make_norm(norm, c1)),
                ("conv2", _conv(c1, c2, 3, 1, dilation)),
                ("bn2", make_norm(norm, c2, activation="identity")),
            ]
        else:
            raise ValueError(f"channels must have 2 or 3 values, got {channels}")
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or in_channels != channels[-1]:
            self.proj_conv = _conv(in_channels, channels[-1], 1, stride)
            self.proj_bn = make_norm(norm, channels[-1], activation="identity")
        self.last = last

    def forward(self, x: torch.Tensor):
        shortcut = self.proj_bn(self.proj_conv(x)) if hasattr(self, "proj_conv") else x
        pre = self.convs(x) + shortcut
        if self.last:
            return F.leaky_relu(pre, SLOPE), pre
        return F.leaky_relu(pre, SLOPE, inplace=True)


class Stage(nn.Sequential):
    """Blocks ``block1..blockN``; x -> (activated output, pre-activation of the last block)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *head, last = list(self)
        for block in head:
            x = block(x)
        return last(x)


class ResNet(nn.Module):
    """x: (B, 3, H, W) -> (mod5 output (B, out_channels, H/os, W/os), [pre-act mod2..mod5]).

    Spatial sizes of the pre-activations: mod2 H/4, mod3 H/8, mod4 and mod5 H/16 at output
    stride 16 (mod3..mod5 H/8 at output stride 8).
    """

    def __init__(self, spec: ResNetSpec, norm: str = "abn", output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in DILATIONS:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        w = spec.width
        stem = _scaled(64, w)
        self.mod1 = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)),
                    ("bn1", make_norm(norm, stem)),
                    ("pool1", nn.MaxPool2d(3, stride=2, padding=1)),
                ]
            )
        )
        base = (64, 64, 256) if spec.bottleneck else (64, 64)
        in_ch = stem
        for i, (num, dil) in enumerate(zip(spec.blocks, DILATIONS[output_stride], strict=True)):
            channels = tuple(_scaled(c * 2**i, w) for c in base)
            blocks = []
            for b in range(num):
                stride = 2 if (b == 0 and i > 0 and dil == 1) else 1
                block = ResidualBlock(in_ch, channels, norm, stride, dil, last=b == num - 1)
                blocks.append((f"block{b + 1}", block))
                in_ch = channels[-1]
            self.add_module(f"mod{i + 2}", Stage(OrderedDict(blocks)))
        self.out_channels = in_ch
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.mod1(x)
        pre = []
        for stage in (self.mod2, self.mod3, self.mod4, self.mod5):
            x, p = stage(x)
            pre.append(p)
        return x, pre


def build_backbone(name: str, norm: str = "abn", output_stride: int = 16) -> ResNet:
    """The backbone ``name`` (see ``BACKBONES``) with ``norm`` layers."""
    return ResNet(parse_backbone(name), norm, output_stride)
