"""Weight regularisers of the EWC / PI / RW baselines: importance estimators and the penalty.

All functions work on plain dicts of named tensors (``{name: Tensor}``, e.g.
``dict(model.named_parameters())``), so they are independent of the model, of DDP and of the
data layout (images or point clouds). The formulas follow the reference's ``utils/regularizer.py``.

**Estimators** (run while a step trains, fed the gradients of the step's *main* loss only, i.e.
before the penalty's gradient is added; ``g`` below is ``p.grad``, ``theta`` the current value,
``theta_prev`` the value at the previous (RW: previous sampled) update):

* :class:`FisherEMA` (EWC): ``F <- alpha * g**2 + (1 - alpha) * F`` every update; ``F`` starts at
  the previous step's Fisher where there is one, at ones elsewhere (e.g. a new classifier).
* :class:`PathIntegral` (PI): ``delta += g * (theta_prev - theta)`` from the second update on; at
  the end ``score = clip_{>0}(delta / ((theta - theta_start)**2 + 1e-20)) + previous score``,
  ``theta_start`` the weights the step started from (the teacher's for parameters it has).
* :class:`RiemannianWalk` (RW): every ``iterations`` updates (the 1st, 11th, ...)
  ``score += g * (theta_prev - theta) / (0.5 * F * (theta - theta_prev)**2 + 1e-8)`` with the
  Fisher ``F`` *before* this update's EMA, then ``theta_prev = theta``; the Fisher EMA as EWC's
  every update. At the end ``score = clip_{>=0}(score)``, averaged with the previous score
  (``0.5 * (score + previous)``) where there is one.

Each estimator has ``update(params, grads)``, ``export(params)`` (the plain dict of CPU tensors
the next step reads, stored in ``model.pt``) and ``state_dict()`` / ``load_state_dict()`` (its
whole running state, for a bit-identical mid-step resume).

**Penalty** at the next step, for the parameters the old model has:
``reg_importance * sum_n sum(w_n * (theta_n - theta_old_n)**2)`` with ``w`` from
:func:`importance_weights`: EWC ``normalize(F)``, PI ``normalize(score)``, RW
``normalize(F) + normalize(score)``, where ``normalize(x) = (x - min x) / (max x - min x + 1e-8)``
per tensor (the reference's default; ``normalize=False`` uses the raw values).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Tensors = Mapping[str, torch.Tensor]
KINDS = ("ewc", "pi", "rw")
PI_EPS = 1e-20
RW_EPS = 1e-8
NORM_EPS = 1e-8


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation of one tensor: ``(x - min) / (max - min + 1e-8)``."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo + NORM_EPS)


def _start_from(
    params: Tensors, previous: Tensors | None, fill: float, what: str
) -> dict[str, torch.Tensor]:
    """Per parameter: a copy of ``previous[name]`` (on the parameter's device) or ``fill``."""
    previous = previous or {}
    out = {}
    for name, p in params.items():
        if name in previous:
            prev = previous[name]
            if prev.shape != p.shape:
                raise ValueError(
                    f"previous {what} of {name} has shape {tuple(prev.shape)}, the parameter "
                    f"{tuple(p.shape)}: the statistics were written for another architecture"
                )
            out[name] = prev.detach().to(device=p.device, dtype=p.dtype).clone()
        else:
            out[name] = torch.full_like(p, fill, requires_grad=False)
    return out


def _copy_weights(
    params: Tensors, grads: Tensors, into: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """``theta_prev``: the current values of the parameters that have a gradient."""
    into = {} if into is None else into
    for name, g in grads.items():
        if g is None:
            continue
        if name in into:
            into[name].copy_(params[name].detach())
        else:
            into[name] = params[name].detach().clone()
    return into


def _cpu(tensors: Tensors) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in tensors.items()}


def _to(tensors: Tensors, like: Tensors) -> dict[str, torch.Tensor]:
    return {k: v.to(like[k].device).clone() for k, v in tensors.items()}


class FisherEMA:
    """EWC's running (empirical, diagonal) Fisher. ``previous``: the last step's export."""

    kind = "ewc"

    def __init__(self, params: Tensors, alpha: float = 0.9, previous: Mapping | None = None):
        self.alpha = float(alpha)
        self.fisher = _start_from(params, (previous or {}).get("fisher"), 1.0, "Fisher")

    def update(self, params: Tensors, grads: Mapping[str, torch.Tensor | None]) -> None:
        a = self.alpha
        for name, g in grads.items():
            if g is not None:
                self.fisher[name] = a * g.detach().pow(2) + (1 - a) * self.fisher[name]

    def export(self, params: Tensors | None = None) -> dict:
        return {"fisher": _cpu(self.fisher), "alpha": self.alpha}

    def state_dict(self) -> dict:
        return {"fisher": _cpu(self.fisher)}

    def load_state_dict(self, state: Mapping) -> None:
        self.fisher = _to(state["fisher"], self.fisher)


class PathIntegral:
    """PI's path integral of the loss change along the training trajectory.

    ``old``: the previous step's weights (the teacher's parameters, used by reference, not
    copied), ``None`` at step 0; parameters it lacks start from their current value.
    ``previous``: the last step's export (its ``score`` is added at :meth:`export`).
    """

    kind = "pi"

    def __init__(
        self, params: Tensors, old: Tensors | None = None, previous: Mapping | None = None
    ):
        self.old = dict(old or {})
        self.start = {n: p.detach().clone() for n, p in params.items() if n not in self.old}
        self.delta = {n: torch.zeros_like(p, requires_grad=False) for n, p in params.items()}
        self.prev_weights: dict[str, torch.Tensor] | None = None
        self.previous_score = dict((previous or {}).get("score") or {})

    def update(self, params: Tensors, grads: Mapping[str, torch.Tensor | None]) -> None:
        if self.prev_weights is not None:
            for name, g in grads.items():
                if g is not None and name in self.prev_weights:
                    step = self.prev_weights[name] - params[name].detach()
                    self.delta[name] += g.detach() * step
        self.prev_weights = _copy_weights(params, grads, self.prev_weights)

    def export(self, params: Tensors) -> dict:
        score = {}
        for name, p in params.items():
            ref = self.old[name] if name in self.old else self.start[name]
            s = self.delta[name] / ((p.detach() - ref).pow(2) + PI_EPS)
            s = torch.where(s > 0, s, torch.zeros_like(s))
            if name in self.previous_score:
                s = self.previous_score[name].to(s.device) + s
            score[name] = s.cpu()
        return {"score": score}

    def state_dict(self) -> dict:
        prev = None if self.prev_weights is None else _cpu(self.prev_weights)
        return {"start": _cpu(self.start), "delta": _cpu(self.delta), "prev_weights": prev}

    def load_state_dict(self, state: Mapping) -> None:
        self.start = _to(state["start"], self.start)
        self.delta = _to(state["delta"], self.delta)
        prev = state["prev_weights"]
        self.prev_weights = None if prev is None else _to(prev, self.delta)


class RiemannianWalk:
    """RW's Fisher-normalised path score (sampled every ``iterations`` updates) and Fisher EMA.

    ``previous``: the last step's export (``score`` and ``fisher``), ``None`` at step 0.
    """

    kind = "rw"

    def __init__(
        self,
        params: Tensors,
        alpha: float = 0.9,
        iterations: int = 10,
        previous: Mapping | None = None,
    ):
        if iterations < 1:
            raise ValueError(f"RW iterations must be >= 1 (got {iterations})")
        self.alpha = float(alpha)
        self.iterations = int(iterations)
        previous = previous or {}
        self.fisher = _start_from(params, previous.get("fisher"), 1.0, "Fisher")
        self.score = {n: torch.zeros_like(p, requires_grad=False) for n, p in params.items()}
        self.previous_score = dict(previous.get("score") or {})
        self.prev_weights: dict[str, torch.Tensor] | None = None
        self.count = 0

    def update(self, params: Tensors, grads: Mapping[str, torch.Tensor | None]) -> None:
        if self.count % self.iterations == 0:
            if self.prev_weights is not None:
                for name, g in grads.items():
                    if g is None or name not in self.prev_weights:
                        continue
                    theta, prev = params[name].detach(), self.prev_weights[name]
                    gain = g.detach() * (prev - theta)
                    den = 0.5 * self.fisher[name] * (theta - prev).pow(2) + RW_EPS
                    self.score[name] += gain / den
            self.prev_weights = _copy_weights(params, grads, self.prev_weights)
        self.count += 1
        a = self.alpha
        for name, g in grads.items():
            if g is not None:
                self.fisher[name] = a * g.detach().pow(2) + (1 - a) * self.fisher[name]

    def export(self, params: Tensors | None = None) -> dict:
        score = {}
        for name, s in self.score.items():
            s = torch.where(s >= 0, s, torch.zeros_like(s))
            if name in self.previous_score:
                s = 0.5 * (s + self.previous_score[name].to(s.device))
            score[name] = s.cpu()
        return {
            "score": score,
            "fisher": _cpu(self.fisher),
            "alpha": self.alpha,
            "iterations": self.iterations,
        }

    def state_dict(self) -> dict:
        prev = None if self.prev_weights is None else _cpu(self.prev_weights)
        return {
            "fisher": _cpu(self.fisher),
            "score": _cpu(self.score),
            "prev_weights": prev,
            "count": self.count,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.fisher = _to(state["fisher"], self.fisher)
        self.score = _to(state["score"], self.score)
        prev = state["prev_weights"]
        self.prev_weights = None if prev is None else _to(prev, self.score)
        self.count = int(state["count"])


Estimator = FisherEMA | PathIntegral | RiemannianWalk


def make_estimator(
    kind: str,
    params: Tensors,
    alpha: float = 0.9,
    iterations: int = 10,
    old: Tensors | None = None,
    previous: Mapping | None = None,
) -> Estimator:
    """The estimator of ``kind`` (``"ewc"``, ``"pi"`` or ``"rw"``)."""
    if kind == "ewc":
        return FisherEMA(params, alpha, previous)
    if kind == "pi":
        return PathIntegral(params, old, previous)
    if kind == "rw":
        return RiemannianWalk(params, alpha, iterations, previous)
    raise ValueError(f"unknown regularizer {kind!r}; valid: {', '.join(KINDS)}")


def importance_weights(
    kind: str, previous: Mapping, normalize_each: bool = True
) -> dict[str, torch.Tensor]:
    """Per-parameter penalty weights from the previous step's export (see the module docstring)."""
    norm = normalize if normalize_each else (lambda x: x)
    if kind == "ewc":
        return {n: norm(f.float()) for n, f in previous["fisher"].items()}
    if kind == "pi":
        return {n: norm(s.float()) for n, s in previous["score"].items()}
    if kind == "rw":
        fisher, score = previous["fisher"], previous["score"]
        return {n: norm(f.float()) + norm(score[n].float()) for n, f in fisher.items()}
    raise ValueError(f"unknown regularizer {kind!r}; valid: {', '.join(KINDS)}")


def penalty(params: Tensors, old: Tensors, weights: Tensors) -> torch.Tensor:
    """``sum_n sum(w_n * (theta_n - old_n)**2)`` over the names in both ``old`` and ``weights``
    (differentiable; the caller multiplies by ``reg_importance``). Returns a scalar."""
    total = None
    for name, p in params.items():
        if name in old and name in weights:
            term = (weights[name] * (p - old[name]).pow(2)).sum()
            total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


@torch.no_grad()
def add_penalty_grad(
    params: Mapping[str, torch.nn.Parameter], old: Tensors, weights: Tensors, scale: float
) -> torch.Tensor:
    """Add the gradient of ``scale * penalty`` (``2 * scale * w * (theta - old)``) to ``p.grad``
    in place and return ``scale * penalty`` (a detached scalar on the parameters' device)."""
    total = None
    for name, p in params.items():
        if name not in old or name not in weights:
            continue
        diff = p - old[name]
        wd = weights[name] * diff
        term = (wd * diff).sum()
        total = term if total is None else total + term
        if p.grad is None:
            p.grad = (2.0 * scale) * wd
        else:
            p.grad.add_(wd, alpha=2.0 * scale)
    if total is None:
        return torch.zeros(())
    return scale * total
