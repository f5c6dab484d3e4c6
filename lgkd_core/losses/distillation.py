"""Output and feature distillation: KD (LwF), unbiased KD (MiB), label-guided KD (LGKD), ILT.

Shapes: student logits (B, C_old + C_new, H, W), teacher logits (B, C_old, H, W); channel order
is background, old classes, new classes; point clouds use (B, C, N) (any trailing shape works,
labels (B, *)). All maths in fp32. ``alpha`` multiplies the teacher's
logits before its softmax (the reference's ``--alpha``, 1 in every preset).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """LwF distillation on the old channels (``KnowledgeDistillationLoss``).

    ``-mean_pixels (1/C_old) * sum_c softmax(alpha*t)_c * log_softmax(s[:, :C_old])_c``.
    Note the mean (not sum) over classes, as in the reference. Returns a scalar.
    """
    num_old = teacher.shape[1]
    logp = torch.log_softmax(student.float()[:, :num_old], dim=1)
    q = torch.softmax(teacher.float() * alpha, dim=1)
    return -(logp * q).mean(dim=1).mean()


def unbiased_kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """MiB's unbiased distillation (``UnbiasedKnowledgeDistillationLoss``).

    The student's background probability is that of background *or any new class*;
    ``-mean_pixels (1/C_old) * [q_0 log p(bg ∪ new) + sum_{c=1}^{C_old-1} q_c log p_c]``.
    Returns a scalar.
    """
    num_old = teacher.shape[1]
    z = student.float()
    den = torch.logsumexp(z, dim=1, keepdim=True)
    bg = torch.logsumexp(torch.cat([z[:, :1], z[:, num_old:]], dim=1), dim=1, keepdim=True)
    logp = torch.cat([bg, z[:, 1:num_old]], dim=1) - den
    q = torch.softmax(teacher.float() * alpha, dim=1)
    return -((q * logp).sum(dim=1) / num_old).mean()


def lgkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    prev_weight: float,
    novel_weight: float,
    ignore_index: int = 255,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Label-guided KD (``LabelGuidedKnowledgeDistillationLoss``), vectorised.

    student_logits: (B, C_old + C_new, h, w); teacher_logits: (B, C_old, h, w); labels: (B, h, w)
    (or (B, 1, h, w)) at the logits' resolution, labels < C_old meaning background.
    With q = softmax(alpha * teacher) and log p = log_softmax(student), per labelled pixel:

    - background pixel: ``l = -prev_weight * sum_{c<C_old} q_c log p_c``;
    - pixel of new class y: the teacher's background mass moves to y,
      ``l = -novel_weight * (sum_{1<=c<C_old} q_c log p_c + q_0 log p_y)``.

    Returns the mean of ``l`` over all non-ignored pixels (one pooled mean, classes summed).
    Deviation: with no labelled pixel the reference returns NaN; this returns 0 (keeps the graph).
    """
    num_old = teacher_logits.shape[1]
    labels = labels.reshape(student_logits.shape[0], *student_logits.shape[2:])
    logp = torch.log_softmax(student_logits.float(), dim=1)
    q = torch.softmax(teacher_logits.float() * alpha, dim=1)

    valid = labels != ignore_index
    novel = valid & (labels >= num_old)
    prev = valid & ~novel
    # Per pixel: s = sum_{c<C_old} q_c log p_c; novel pixels swap q_0 log p_0 for q_0 log p_y.
    s = (q * logp[:, :num_old]).sum(dim=1)
    y = torch.where(novel, labels, torch.zeros_like(labels))
    logp_y = logp.gather(1, y.unsqueeze(1)).squeeze(1)
    q0 = q[:, 0]
    s_novel = s + q0 * (logp_y - logp[:, 0])
    weighted = prev_weight * torch.where(prev, s, 0.0) + novel_weight * torch.where(
        novel, s_novel, 0.0
    )
    return -weighted.sum() / valid.sum().clamp(min=1)


def ilt_feature_loss(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """ILT's encoder distillation: MSE over all elements of two (B, C, h, w) feature maps."""
    return F.mse_loss(new.float(), old.float())
