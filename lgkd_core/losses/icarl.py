"""iCaRL-style sigmoid distillation (the distillation term of LwF-MC, "combined" variant).

The student's old channels are pulled towards the teacher's sigmoid probabilities with a binary
cross-entropy per channel. The reference averages the BCE over batch, old channels and pixels,
then multiplies by the number of old channels so that classes are summed rather than averaged;
the method's weight (``MethodConfig.icarl``, 10 in the LwF-MC preset) is applied by the caller.

Shapes: student logits ``(B, C_old + C_new, *)``, teacher logits ``(B, C_old, *)``. fp32 maths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def icarl_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``C_old * mean_{B, C_old, *} BCEWithLogits(student[:, :C_old], sigmoid(teacher))``.

    The target is soft (in (0, 1)), so the loss is not 0 at its minimum; its gradient w.r.t.
    the student logit is ``C_old / N * (sigmoid(s) - sigmoid(t))`` with N the number of
    elements. Returns a scalar.
    """
    num_old = teacher.shape[1]
    target = torch.sigmoid(teacher.float())
    per = F.binary_cross_entropy_with_logits(student.float()[:, :num_old], target)
    return num_old * per
