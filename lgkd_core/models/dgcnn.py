"""DGCNN for point-cloud segmentation in pure PyTorch, with one classifier per incremental step.

Network (defaults = the 3DPC-CISS configuration: k 20, EdgeConv widths [[64, 64]] * 3, MLP
[512, 256]):

1. EdgeConv blocks. Block ``l`` finds the k nearest neighbours of every point (by squared
   Euclidean distance, the point itself included), builds the edge features
   ``[x_j - x_i, x_i]`` (B, 2C, N, k), applies 1x1 Conv2d + BN + LeakyReLU(0.2) per width and
   takes the max over the k neighbours -> (B, C_l, N). The graph is dynamic: block 0 uses the
   input (see ``knn_on``), block ``l > 0`` the previous block's output features.
2. ``local`` = the concatenation of the block outputs (B, sum C_l, N).
3. Global feature: the max over the N points of ``local`` (or, with ``global_dim``, of a
   Conv1d + BN + LeakyReLU embedding of it to ``global_dim`` channels, as the original DGCNN
   segmentation network does with 1024), repeated at every point and concatenated to ``local``.
4. Conv1d MLP (``mlp``, each 1x1 Conv1d + BN + LeakyReLU(0.2)) -> point features (B, 256, N).
5. Optional dropout, then the per-step classifiers ``cls.t`` = Conv1d(256, n_t, 1).

Input (B, F, N), F = 9 by default: xyz (block-shifted, metres), rgb / 255 and xyz scaled to
[0, 1]. ``knn_on="xyz"`` (default) builds the first graph on the first 3 channels only, a purely
geometric neighbourhood in metres; ``"all"`` uses every input channel (colour included).

The kNN runs under ``no_grad`` in float32 (its indices carry no gradient, and a bf16 distance
matrix would reorder neighbours) and over chunks of ``knn_chunk`` query points, so its
distance matrix is (B, chunk, N) rather than (B, N, N).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from lgkd_core.models.norm import make_norm
from lgkd_core.models.segmenter import StepClassifiers, check_classes_per_step

KNN_ON = ("xyz", "all")
LEAKY_SLOPE = 0.2


def knn(x: torch.Tensor, k: int, chunk: int | None = None) -> torch.Tensor:
    """Indices of the ``k`` nearest points of every point, by ``-||x_i - x_j||^2``.

    x: (B, C, N). Returns (B, N, k) int64, nearest first (the point itself is its own nearest
    neighbour). ``chunk``: query points per distance matrix (None: all N at once). Requires
    ``k <= N``.
    """
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"knn needs 1 <= k <= number of points, got k={k}, N={n}")
    chunk = n if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"knn chunk must be >= 1, got {chunk}")
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        xt = x.transpose(1, 2)  # (B, N, C)
        sq = (x * x).sum(dim=1)  # (B, N)
        out = []
        for start in range(0, n, chunk):
            q = xt[:, start : start + chunk]  # (B, n_q, C)
            neg = 2 * torch.bmm(q, x) - sq[:, start : start + chunk, None] - sq[:, None, :]
            out.append(neg.topk(k, dim=-1).indices)
    return torch.cat(out, dim=1)


def edge_features(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """EdgeConv input: x (B, C, N), neighbours idx (B, N, k) -> (B, 2C, N, k) =
    ``[x_j - x_i, x_i]`` for neighbour j of point i."""
    b, c, n = x.shape
    k = idx.shape[-1]
    xt = x.transpose(1, 2)  # (B, N, C)
    flat = idx.reshape(b, n * k, 1).expand(-1, -1, c)
    neighbours = torch.gather(xt, 1, flat).view(b, n, k, c)
    center = xt.unsqueeze(2).expand(-1, -1, k, -1)
    return torch.cat([neighbours - center, center], dim=3).permute(0, 3, 1, 2)


class ConvNormAct(nn.Module):
    """1x1 convolution (no bias) + norm + LeakyReLU(0.2) on (B, C, N, k) or (B, C, N).

    The norm layers of :mod:`lgkd_core.models.norm` are written for 4-D maps, so a (B, C, N)
    input is normalised as (B, C, N, 1): same statistics, and ``abn`` stays synchronised across
    processes.
    """

    def __init__(self, in_channels: int, out_channels: int, dims: int, norm: str) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.conv = conv(in_channels, out_channels, 1, bias=False)
        self.norm = make_norm(norm, out_channels, "leaky_relu", LEAKY_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.dim() == 3:
            return self.norm(y.unsqueeze(-1)).squeeze(-1)
        return self.norm(y)


class EdgeConv(nn.Module):
    """kNN graph + edge features + 1x1 Conv2d stack + max over neighbours.

    forward(x: (B, C_in, N), graph: (B, C_g, N) the coordinates of the kNN, default x)
    -> (B, widths[-1], N).
    """

    def __init__(
        self, in_channels: int, widths: Sequence[int], k: int, norm: str, knn_chunk: int | None
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("an EdgeConv block needs at least one width")
        self.k = k
        self.knn_chunk = knn_chunk
        chans = [2 * in_channels, *(int(w) for w in widths)]
        self.convs = nn.Sequential(*(ConvNormAct(a, b, 2, norm) for a, b in pairwise(chans)))
        self.out_channels = chans[-1]

    def forward(self, x: torch.Tensor, graph: torch.Tensor | None = None) -> torch.Tensor:
        idx = knn(x if graph is None else graph, self.k, self.knn_chunk)
        return self.convs(edge_features(x, idx)).max(dim=-1).values


class DGCNN(nn.Module):
    """EdgeConv blocks, global max feature and the Conv1d MLP (see the module docstring).

    forward(x: (B, in_features, N)) -> (list of the block outputs (B, C_l, N), point features
    (B, mlp[-1], N)).
    """

    def __init__(
        self,
        in_features: int = 9,
        k: int = 20,
        edge_widths: Sequence[Sequence[int]] = ((64, 64), (64, 64), (64, 64)),
        mlp: Sequence[int] = (512, 256),
        norm: str = "abn",
        knn_on: str = "xyz",
        knn_chunk: int | None = 1024,
        global_dim: int | None = None,
    ) -> None:
        super().__init__()
        if knn_on not in KNN_ON:
            raise ValueError(f"knn_on must be one of {KNN_ON}, got {knn_on!r}")
        if knn_on == "xyz" and in_features < 3:
            raise ValueError(f"knn_on='xyz' needs >= 3 input features, got {in_features}")
        if not edge_widths or not mlp:
            raise ValueError("DGCNN needs at least one EdgeConv block and one MLP layer")
        self.in_features = in_features
        self.k = k
        self.knn_on = knn_on
        blocks, chans = [], in_features
        for widths in edge_widths:
            blocks.append(EdgeConv(chans, widths, k, norm, knn_chunk))
            chans = blocks[-1].out_channels
        self.edge_convs = nn.ModuleList(blocks)
        local = sum(b.out_channels for b in blocks)
        self.local_channels = local
        self.global_embed = ConvNormAct(local, global_dim, 1, norm) if global_dim else None
        glob = global_dim or local
        layers, prev = [], local + glob
        for width in mlp:
            layers.append(ConvNormAct(prev, int(width), 1, norm))
            prev = int(width)
        self.mlp = nn.Sequential(*layers)
        self.out_channels = prev

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if x.dim() != 3 or x.shape[1] != self.in_features:
            raise ValueError(
                f"DGCNN expects (B, {self.in_features}, N) points, got {tuple(x.shape)}"
            )
        outs = []
        h = x
        for i, block in enumerate(self.edge_convs):
            graph = x[:, :3] if i == 0 and self.knn_on == "xyz" else None
            h = block(h, graph)
            outs.append(h)
        local = torch.cat(outs, dim=1)
        g = local if self.global_embed is None else self.global_embed(local)
        g = g.max(dim=-1, keepdim=True).values.expand(-1, -1, local.shape[-1])
        return outs, self.mlp(torch.cat([local, g], dim=1))


@dataclass
class PointFeatures:
    """What the distillation losses read from one forward pass of the point model.

    stages: the EdgeConv block outputs (B, C_l, N) and the point features (B, 256, N);
    body: the point features (B, 256, N), the classifiers' input before dropout (ILT's feature
    distillation reads it); logits_small: the logits (B, C, N) themselves, since points are not
    downsampled (the objective's LGKD term reads this attribute).
    """

    stages: list[torch.Tensor]
    body: torch.Tensor
    logits_small: torch.Tensor


class IncrementalPointSegmenter(StepClassifiers):
    """``body`` (DGCNN) -> dropout -> classifiers ``cls.0, cls.1, ...`` (one per step).

    forward(x: (B, F, N)) -> logits (B, C, N), or with ``return_features=True`` the pair
    (logits, PointFeatures). C = sum of ``classes_per_step``; channel order: step 0's classes
    (background first), then each later step's. Same public surface as
    :class:`~lgkd_core.models.segmenter.IncrementalSegmenter`, so MiB's ``init_balanced``
    applies as is.
    """

    def __init__(self, body: DGCNN, classes_per_step: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        check_classes_per_step(classes_per_step)
        self.body = body
        self.feature_channels = body.out_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.cls = nn.ModuleList([self.new_classifier(int(n)) for n in classes_per_step])

    def new_classifier(self, num: int) -> nn.Conv1d:
        return nn.Conv1d(self.feature_channels, num, 1)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        stages, feats = self.body(x)
        dropped = self.dropout(feats)
        logits = torch.cat([c(dropped) for c in self.cls], dim=1)
        if not return_features:
            return logits
        return logits, PointFeatures(stages=[*stages, feats], body=feats, logits_small=logits)


def build_point_model(
    classes_per_step: Sequence[int],
    in_features: int = 9,
    k: int = 20,
    edge_widths: Sequence[Sequence[int]] = ((64, 64), (64, 64), (64, 64)),
    mlp: Sequence[int] = (512, 256),
    norm: str = "abn",
    knn_on: str = "xyz",
    knn_chunk: int | None = 1024,
    global_dim: int | None = None,
    dropout: float = 0.0,
) -> IncrementalPointSegmenter:
    """DGCNN (arguments as :class:`DGCNN`) + one Conv1d classifier per step.

    ``norm``: a kind of :func:`lgkd_core.models.norm.make_norm` (``abn``: batch norm
    synchronised across processes; ``bn``: plain batch norm).
    """
    body = DGCNN(in_features, k, edge_widths, mlp, norm, knn_on, knn_chunk, global_dim)
    return IncrementalPointSegmenter(body, list(classes_per_step), dropout)
