"""Learning-rate schedule and optimizer of the reference recipe."""

from __future__ import annotations

import torch
from torch import nn


def poly_lambda(max_iters: int, power: float = 0.9):
    """Multiplier ``(1 - i / max_iters) ** power`` for optimizer step ``i`` (0-based)."""
    max_iters = max(1, max_iters)

    def factor(i: int) -> float:
        return (1.0 - min(i, max_iters) / max_iters) ** power

    return factor


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float = 1e-4, momentum: float = 0.9
) -> torch.optim.SGD:
    """SGD with Nesterov momentum; body, head and classifiers as separate groups, one LR.

    Weight decay applies to every trainable parameter (biases and norm affine included), as in
    the reference.
    """
    groups = []
    for prefix in ("body", "head", "cls"):
        params = [
            p
            for name, p in model.named_parameters()
            if name.split(".", 1)[0] == prefix and p.requires_grad
        ]
        if params:
            groups.append({"params": params, "name": prefix})
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay
    )
