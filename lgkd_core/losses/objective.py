"""The per-iteration objective: a method's losses composed as in the reference's ``train.py``.

Step 0 (no teacher): plain cross-entropy on the raw labels, mean over all pixels.
Step t >= 1, for a :class:`~lgkd_core.methods.MethodConfig` ``m`` (the reference trainer's
composition, term by term):

* ``ce``: cross-entropy (``m.ce_type``: ``"ce"``, MiB's ``"unce"`` or LwF-MC's one-hot ``"bce"``)
  on full-resolution logits, mean over all B*H*W pixels. With ``m.pseudo == "entropy"``
  background pixels are first replaced by the teacher's confident predictions (others ignored)
  and, with ``m.adaptive_factor``, each image's per-pixel loss is scaled by its fraction of
  accepted background pixels.
* ``kd`` (when ``m.kd_type`` is set and ``m.loss_kd > 0``): ``loss_kd`` times
  - ``"kd"`` / ``"unkd"``: KD / unbiased KD on full-resolution logits;
  - ``"lgkd"``: label-guided KD on the output-stride logits (``feats.logits_small``) with the
    *original* (not pseudo) labels sampled by nearest interpolation at the small logits' size
    (the top-left pixel of each cell when the size divides, as the reference's 1/16 rescale).
* ``icarl`` (``m.icarl > 0``, LwF-MC): ``icarl`` times the sigmoid distillation of the old
  channels (:func:`~lgkd_core.losses.icarl.icarl_distillation`).
* ``de`` (``m.loss_de > 0``): ``loss_de`` times the MSE between the students' and teacher's
  ``feats.body``.
* ``pod`` (``m.pod``): local POD over ``feats.stages`` (factor ``pod_factor`` each) and
  ``feats.logits_small`` (factor ``pod_logits_factor``, new-class logits summed into background),
  times sqrt(num_seen / num_new), divided by the number of maps.

``total`` is their sum. Only the components the method uses are present. The EWC / PI / RW
weight penalty (``reg``) depends on the parameters, not the outputs: the trainer adds it
(:mod:`lgkd_core.losses.regularizers`). Features are any objects with attributes ``stages``
(list of (B, C_l, h_l, w_l)), ``body`` and ``logits_small`` (B, C, h, w); for point clouds
(B, C, N) maps, ``logits_small`` being the logits themselves. Everything is computed in fp32
with autocast disabled.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lgkd_core.losses.bce import bce_with_ignore
from lgkd_core.losses.ce import cross_entropy, unbiased_cross_entropy
from lgkd_core.losses.distillation import ilt_feature_loss, kd_loss, lgkd_loss, unbiased_kd_loss
from lgkd_core.losses.icarl import icarl_distillation
from lgkd_core.losses.pod import pod_loss
from lgkd_core.losses.pseudo import pseudo_label_entropy
from lgkd_core.methods import MethodConfig


def downsample_labels(labels: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour (B, H, W) int64 -> (B, h, w): source pixel floor(i * H / h).

    Also (B, N) -> (B, n) for point labels (``size`` = (n,)); the same size is the identity."""
    small = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return small[:, 0].long()


def _need(feats: Any, what: str, method: MethodConfig) -> Any:
    if feats is None:
        raise ValueError(
            f"method {method.name} needs intermediate features at steps >= 1 ({what}); run the "
            "student and teacher with return_features=True (MethodConfig.needs_features)"
        )
    return feats


def step_losses(
    method: MethodConfig,
    labels: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    student_feats: Any = None,
    teacher_feats: Any = None,
    thresholds: torch.Tensor | None = None,
    num_old: int = 0,
    num_seen: int | None = None,
    num_new: int | None = None,
    ignore_index: int = 255,
) -> dict[str, torch.Tensor]:
    """Loss components and ``total`` for one batch (see the module docstring).

    labels: (B, H, W) int64 in model ids (0 = background / old / future, 255 ignored);
    student_logits: (B, C_seen, H, W); teacher_logits: (B, C_old, H, W) or None at step 0;
    thresholds: (C_old,) from :class:`~lgkd_core.losses.pseudo.EntropyThresholds` when the method
    pseudo-labels; num_old / num_seen / num_new: C_old, C_seen and the step's new classes.
    Point clouds: (B, N) labels and (B, C, N) logits work for every term but POD (ValueError).
    """
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        if teacher_logits is None:
            ce = cross_entropy(student_logits, labels, ignore_index=ignore_index)
            return {"ce": ce, "total": ce}
        return _incremental(
            method,
            labels,
            student_logits,
            teacher_logits,
            student_feats,
            teacher_feats,
            thresholds,
            num_old,
            num_seen if num_seen is not None else student_logits.shape[1],
            num_new if num_new is not None else student_logits.shape[1] - num_old,
            ignore_index,
        )


def _incremental(
    m: MethodConfig,
    labels: torch.Tensor,
    logits: torch.Tensor,
    t_logits: torch.Tensor,
    feats: Any,
    t_feats: Any,
    thresholds: torch.Tensor | None,
    num_old: int,
    num_seen: int,
    num_new: int,
    ignore_index: int,
) -> dict[str, torch.Tensor]:
    if t_logits.shape[1] != num_old or logits.shape[1] != num_seen:
        raise ValueError(
            f"teacher has {t_logits.shape[1]} channels and student {logits.shape[1]}, expected "
            f"num_old={num_old} and num_seen={num_seen}"
        )
    out: dict[str, torch.Tensor] = {}

    ce_labels, weight = labels, None
    if m.pseudo == "entropy":
        if thresholds is None:
            raise ValueError(
                f"method {m.name} pseudo-labels: pass thresholds from EntropyThresholds.compute()"
            )
        ce_labels, factor = pseudo_label_entropy(
            t_logits, labels, thresholds, num_seen, ignore_index=ignore_index
        )
        if m.adaptive_factor:
            weight = factor.view(-1, *[1] * (labels.dim() - 1))
    if m.ce_type == "unce":
        out["ce"] = unbiased_cross_entropy(logits, ce_labels, num_old, ignore_index, weight)
    elif m.ce_type == "bce":
        out["ce"] = bce_with_ignore(logits, ce_labels, ignore_index, weight)
    else:
        out["ce"] = cross_entropy(logits, ce_labels, ignore_index, weight)

    if m.uses_kd:
        if m.kd_type == "lgkd":
            s_small = _need(feats, "small logits for LGKD", m).logits_small
            t_small = _need(t_feats, "small logits for LGKD", m).logits_small
            small_labels = downsample_labels(labels, tuple(s_small.shape[2:]))
            kd = lgkd_loss(
                s_small, t_small, small_labels, m.prev_kd, m.novel_kd, ignore_index, m.alpha
            )
        elif m.kd_type == "unkd":
            kd = unbiased_kd_loss(logits, t_logits, m.alpha)
        else:
            kd = kd_loss(logits, t_logits, m.alpha)
        out["kd"] = m.loss_kd * kd

    if m.uses_icarl:
        out["icarl"] = m.icarl * icarl_distillation(logits, t_logits)

    if m.uses_de:
        body = _need(feats, "body for ILT", m).body
        out["de"] = m.loss_de * ilt_feature_loss(body, _need(t_feats, "body for ILT", m).body)

    if m.pod:
        s = _need(feats, "stages for POD", m)
        t = _need(t_feats, "stages for POD", m)
        old_maps = [*t.stages, t.logits_small]
        new_maps = [*s.stages, s.logits_small]
        factors = [m.pod_factor] * len(t.stages) + [m.pod_logits_factor]
        out["pod"] = pod_loss(old_maps, new_maps, factors, num_seen, num_new, m.pod_scales)

    out["total"] = sum(out.values())
    return out
