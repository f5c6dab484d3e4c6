"""Losses for continual semantic segmentation: pure functions on tensors (shapes in docstrings).

- :mod:`.ce`: cross-entropy (reference reduction over all pixels), MiB's unbiased CE.
- :mod:`.bce`: one-hot binary cross-entropy with an ignore index (LwF-MC).
- :mod:`.icarl`: sigmoid distillation of the old channels (LwF-MC).
- :mod:`.distillation`: KD (LwF), unbiased KD (MiB), label-guided KD (LGKD), ILT's feature MSE.
- :mod:`.pod`: PLOP's local POD on features and logits.
- :mod:`.pseudo`: entropy pseudo-labels and per-class median thresholds.
- :mod:`.regularizers`: EWC / PI / RW importance estimators and their weight penalty.
- :mod:`.objective`: ``step_losses``, a method's composition of the above for one batch.
"""

from lgkd_core.losses.bce import bce_with_ignore
from lgkd_core.losses.ce import cross_entropy, unbiased_cross_entropy
from lgkd_core.losses.distillation import ilt_feature_loss, kd_loss, lgkd_loss, unbiased_kd_loss
from lgkd_core.losses.icarl import icarl_distillation
from lgkd_core.losses.objective import step_losses
from lgkd_core.losses.pod import merge_new_logits, pod_loss
from lgkd_core.losses.pseudo import EntropyThresholds, pseudo_label_entropy

__all__ = [
    "EntropyThresholds",
    "bce_with_ignore",
    "cross_entropy",
    "icarl_distillation",
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
