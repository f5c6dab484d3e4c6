"""Normalisation + activation layers with In-Place ABN's state_dict keys.

Every kind has the tensors ``weight``, ``bias``, ``running_mean``, ``running_var`` and
``num_batches_tracked`` (in that order), so checkpoints move freely between kinds:

* ``abn``: pure PyTorch batch norm + leaky ReLU (or identity). In training mode, when
  ``torch.distributed`` is initialised with more than one process, the batch statistics are
  synchronised over the process group (one all-reduce forward, one backward), so N processes
  with B images each normalise exactly like one process with N*B images (the reference's
  ``InPlaceABNSync``), on CPU (gloo) as well as on GPUs.
* ``bn``: ``nn.BatchNorm2d`` followed by the activation; never synchronised.
* ``iabn`` / ``iabn_sync``: the ``inplace_abn`` package's ``InPlaceABN`` / ``InPlaceABNSync``
  (GPU), only when it is installed.

Mixed precision: inside ``torch.autocast`` (or for any half / bfloat16 input) the normalisation
and the activation run in float32 and the result is cast back to the input's dtype, so the
statistics are float32 while activations stay in the low-precision dtype between convolutions.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

NORM_KINDS = ("abn", "bn", "iabn", "iabn_sync")
ACTIVATIONS = ("leaky_relu", "identity")


def _activate(y: torch.Tensor, activation: str, slope: float) -> torch.Tensor:
    if activation == "leaky_relu":
        # In place on a fresh tensor; neither batch-norm backward needs its output.
        return F.leaky_relu(y, slope, inplace=True)
    return y


def _sync_group_size(group) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class _SyncBatchNorm(torch.autograd.Function):
    """Batch norm with statistics over every process of ``group``. x: (B, C, H, W), float32.

    Forward all-reduces (sum, sum of squares, count) per channel; backward all-reduces the two
    per-channel gradient sums that the input gradient depends on. The result is the gradient of
    the sum of all processes' losses, as with single-process batch norm on the joined batch.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        c = x.shape[1]
        n_local = x.numel() // c if c else 0
        if n_local > 0:
            # Local two-pass statistics (stable), combined in float64 (no cancellation).
            var_l, mean_l = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        else:
            var_l = mean_l = x.new_zeros(c)
        mean_l, var_l = mean_l.double(), var_l.double()
        count = torch.full((1,), float(n_local), dtype=torch.float64, device=x.device)
        packed = torch.cat([mean_l * n_local, (var_l + mean_l * mean_l) * n_local, count])
        dist.all_reduce(packed, group=group)
        n = packed[-1]
        mean = packed[:c] / n
        var = (packed[c : 2 * c] / n - mean * mean).clamp_min(0)
        if running_mean is not None:
            with torch.no_grad():
                unbiased = var * (n / (n - 1).clamp_min(1))  # no host sync
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        mean = mean.to(x.dtype)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        ctx.save_for_backward(x, weight, mean, invstd, packed[-1:].to(x.dtype))
        ctx.group = group
        ctx.has_bias = bias is not None
        return x * scale[:, None, None] + shift[:, None, None]

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, invstd, n = ctx.saved_tensors
        c = x.shape[1]
        xhat = (x - mean[:, None, None]) * invstd[:, None, None]
        sum_g = grad_out.sum(dim=(0, 2, 3))
        sum_gx = (grad_out * xhat).sum(dim=(0, 2, 3))
        grad_weight = sum_gx if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_g if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_g, sum_gx])
            dist.all_reduce(sums, group=ctx.group)
            mean_g = (sums[:c] / n)[:, None, None]
            mean_gx = (sums[c:] / n)[:, None, None]
            scale = invstd if weight is None else invstd * weight
            grad_x = (grad_out - mean_g - xhat * mean_gx) * scale[:, None, None]
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


class ABN(nn.Module):
    """Batch norm + activation, synchronised across processes while training.

    x: (B, C, H, W) -> (B, C, H, W), same dtype and memory format. ``activation`` is
    ``leaky_relu`` (slope ``activation_param``) or ``identity``. ``group``: the process group to
    synchronise over (None = the default group).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        activation: str = "leaky_relu",
        activation_param: float = 0.01,
        group=None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.activation = activation
        self.activation_param = activation_param
        self.group = group
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.running_mean.zero_()
        self.running_var.fill_(1)
        self.num_batches_tracked.zero_()

    def _momentum(self) -> float:
        if self.training:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
            return 1.0 / max(int(self.num_batches_tracked), 1)
        return self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        with torch.autocast(x.device.type, enabled=False):
            y = self._normalise(x)
            y = _activate(y, self.activation, self.activation_param)
        return y.to(in_dtype)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.float(), self.bias.float()
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps
            )
        momentum = self._momentum()
        if _sync_group_size(self.group) > 1:
            return _SyncBatchNorm.apply(
                x,
                weight,
                bias,
                self.running_mean,
                self.running_var,
                self.eps,
                momentum,
                self.group,
            )
        return F.batch_norm(
            x, self.running_mean, self.running_var, weight, bias, True, momentum, self.eps
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"activation={self.activation}, slope={self.activation_param}"
        )


class BNAct(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` followed by the activation (not synchronised across processes)."""

    def __init__(
        self, num_features: int, activation: str = "leaky_relu", activation_param: float = 0.01
    ) -> None:
        super().__init__(num_features)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.activation_param = activation_param

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        with torch.autocast(x.device.type, enabled=False):
            y = super().forward(x)
            y = _activate(y, self.activation, self.activation_param)
        return y.to(in_dtype)


def _inplace_abn_class(sync: bool) -> type[nn.Module]:
    """The package's layer, wrapped to run in float32 (it rejects bf16 input with fp32 weights)."""
    try:
        import inplace_abn
    except ImportError as err:
        kind = "iabn_sync" if sync else "iabn"
        raise ImportError(
            f"norm {kind!r} needs the inplace_abn package, which is not installed; install it "
            "(see README, 'Optional: In-Place ABN'; it needs CUDA) or use norm 'abn' (pure "
            "PyTorch, same weights, synchronised across processes too)"
        ) from err
    base = inplace_abn.InPlaceABNSync if sync else inplace_abn.InPlaceABN

    class Float32InPlaceABN(base):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dtype in (torch.float16, torch.bfloat16):
                with torch.autocast(x.device.type, enabled=False):
                    return super().forward(x.float()).to(x.dtype)
            return super().forward(x)

    Float32InPlaceABN.__name__ = base.__name__
    return Float32InPlaceABN


def make_norm(
    kind: str, num_features: int, activation: str = "leaky_relu", slope: float = 0.01
) -> nn.Module:
    """A norm + activation layer of ``kind`` (one of ``NORM_KINDS``) for ``num_features``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if kind == "abn":
        return ABN(num_features, activation=activation, activation_param=slope)
    if kind == "bn":
        return BNAct(num_features, activation=activation, activation_param=slope)
    if kind in ("iabn", "iabn_sync"):
        cls = _inplace_abn_class(kind == "iabn_sync")
        kwargs = {"activation": activation, "activation_param": slope}
        if kind == "iabn_sync":
            kwargs["group"] = dist.group.WORLD
        return cls(num_features, **kwargs)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORM_KINDS)}")


def resolve_norm(norm: str, device: torch.device) -> str:
    """``auto``: synchronised In-Place ABN on GPUs when installed, else the pure-PyTorch ABN."""
    if norm != "auto":
        return norm
    if device.type == "cuda":
        try:
            import inplace_abn  # noqa: F401

            return "iabn_sync"
        except ImportError:
            pass
    return "abn"
