"""The reference's DeepLabV3 head (ASPP with an additive image-pooling branch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lgkd_core.models.norm import make_norm

SLOPE = 0.01
ASPP_DILATIONS = {16: (6, 12, 18), 8: (12, 24, 32)}  # the reference uses 32 (not 36) at OS8


class DeepLabV3(nn.Module):
    """x: (B, in_channels, h, w) -> (B, out_channels, h, w).

    ``map_convs`` (1x1 and three dilated 3x3) -> concat -> ``map_bn`` -> ``red_conv``, plus the
    pooling branch ``global_pooling_conv`` -> ``global_pooling_bn`` -> ``pool_red_conv``, summed,
    then ``red_bn``. Training: global average pooling (its norm needs >= 2 images per process).
    Eval with ``pooling_size``: average pooling with window min(pooling_size, h/w), stride 1,
    replicate-padded back to h x w (equals global pooling when the map is no larger).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        hidden_channels: int = 256,
        output_stride: int = 16,
        norm: str = "abn",
        pooling_size: int | tuple[int, int] | None = 32,
    ) -> None:
        super().__init__()
        if output_stride not in ASPP_DILATIONS:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.pooling_size = pooling_size
        convs = [nn.Conv2d(in_channels, hidden_channels, 1, bias=False)]
        for d in ASPP_DILATIONS[output_stride]:
            convs.append(
                nn.Conv2d(in_channels, hidden_channels, 3, padding=d, dilation=d, bias=False)
            )
        self.map_convs = nn.ModuleList(convs)
        self.map_bn = make_norm(norm, hidden_channels * 4)
        self.global_pooling_conv = nn.Conv2d(in_channels, hidden_channels, 1, bias=False)
        self.global_pooling_bn = make_norm(norm, hidden_channels)
        self.red_conv = nn.Conv2d(hidden_channels * 4, out_channels, 1, bias=False)
        self.pool_red_conv = nn.Conv2d(hidden_channels, out_channels, 1, bias=False)
        self.red_bn = make_norm(norm, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = nn.init.calculate_gain("leaky_relu", SLOPE)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, gain)
            elif hasattr(m, "running_var") and getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([conv(x) for conv in self.map_convs], dim=1)
        out = self.red_conv(self.map_bn(out))
        pool = self.pool_red_conv(self.global_pooling_bn(self.global_pooling_conv(self._pool(x))))
        # (B, C, 1, 1) broadcasts over h x w; the eval-mode window pooling is already h x w.
        return self.red_bn(out + pool)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.pooling_size is None:
            return x.mean(dim=(2, 3), keepdim=True)
        size = self.pooling_size
        ph, pw = (size, size) if isinstance(size, int) else size
        kh, kw = min(ph, x.shape[2]), min(pw, x.shape[3])
        # Left/top (k-1)//2, right/bottom the rest, so the map is h x w again.
        pad = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)
        pool = F.avg_pool2d(x, (kh, kw), stride=1)
        return F.pad(pool, pad, mode="replicate")
