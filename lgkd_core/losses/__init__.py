"""Losses for continual semantic segmentation: pure functions on tensors (shapes in docstrings).

- :mod:`.ce`: cross-entropy (reference reduction over all pixels), MiB's unbiased CE.
- :mod:`.distillation`: KD (LwF), unbiased KD (MiB), label-guided KD (LGKD), ILT's feature MSE.
- :mod:`.pod`: PLOP's local POD on features and logits.
- :mod:`.pseudo`: entropy pseudo-labels and per-class median thresholds.
- :mod:`.objective`: ``step_losses``, a method's composition of the above for one batch.
"""

from lgkd_core.losses.ce import cross_entropy, unbiased_cross_entropy
from lgkd_core.losses.distillation import ilt_feature_loss, kd_loss, lgkd_loss, unbiased_kd_loss
from lgkd_core.losses.objective import step_losses
from lgkd_core.losses.pod import merge_new_logits, pod_loss
from lgkd_core.losses.pseudo import EntropyThresholds, pseudo_label_entropy

__all__ = [
    "EntropyThresholds",
    "cross_entropy",
    "ilt_feature_loss",
    "kd_loss",
    "lgkd_loss",
    "merge_new_logits",
    "pod_loss",
    "pseudo_label_entropy",
    "step_losses",
    "unbiased_cross_entropy",
    "unbiased_kd_loss",
]
