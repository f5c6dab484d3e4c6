"""One LGKD training step of VOC 15-1 step 1 on seeded random tensors, for the throughput benches.

As ``lgkd_core.engine.trainer.StepTrainer._losses`` + ``_optimize``: frozen teacher forward with
features (under ``teacher_mode``), student forward with features, ``step_losses`` with the LGKD
preset (pseudo-label thresholds computed once beforehand), backward (through a GradScaler for
fp16), the trainer's SGD (``make_optimizer``); the non-finite check (one host sync) is left out.
Autocast wraps both forwards, as in the trainer.
"""

from __future__ import annotations

import contextlib

import torch

from lgkd_core.engine.schedule import make_optimizer
from lgkd_core.losses import EntropyThresholds, step_losses
from lgkd_core.methods import get_method
from lgkd_core.models import build_model, init_balanced

NUM_OLD, NUM_NEW = 16, 1
TEACHER_MODES = {
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
    "grad_enabled": contextlib.nullcontext,
}


class TrainStep:
    """Models, optimizer and inputs of one configuration; ``step()`` runs one iteration."""

    def __init__(
        self,
        arch: dict,
        batch: int,
        crop: int,
        amp: str | None = None,
        channels_last: bool = False,
        teacher_mode: str = "no_grad",
        device: str = "cpu",
        compile: bool = False,
    ) -> None:
        torch.manual_seed(0)
        self.device = torch.device(device)
        teacher = build_model(classes_per_step=[NUM_OLD], **arch).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = build_model(classes_per_step=[NUM_OLD, NUM_NEW], **arch)
        student.load_state_dict(teacher.state_dict(), strict=False)
        init_balanced(student, NUM_NEW)
        teacher.to(self.device)
        student.to(self.device).train()
        g = torch.Generator().manual_seed(1)
        images = torch.randn(batch, 3, crop, crop, generator=g)
        labels = torch.zeros(batch, crop, crop, dtype=torch.long)
        labels[:, crop // 4 : crop // 2, crop // 4 : crop // 2] = NUM_OLD
        labels[:, crop // 4 - 1, :] = 255
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
            student.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, None: None}[amp]
        self.teacher_mode = TEACHER_MODES[teacher_mode]
        self.method = get_method("LGKD", "voc", "15-1")
        self.optimizer = make_optimizer(student, lr=0.001)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        acc = EntropyThresholds(NUM_OLD, NUM_OLD + NUM_NEW, device=self.device)
        with torch.no_grad(), self._autocast():
            acc.update(teacher(self.images).float(), self.labels)
        self.thresholds = acc.compute(self.method.pseudo_threshold)
        self.teacher = torch.compile(teacher) if compile else teacher
        self.student = torch.compile(student) if compile else student

    def _autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )

    def step(self) -> torch.Tensor:
        """One iteration; returns the (detached) total loss, left on the device."""
        with self.teacher_mode(), self._autocast():
            t_logits, t_feats = self.teacher(self.images, return_features=True)
        with self._autocast():
            s_logits, s_feats = self.student(self.images, return_features=True)
        losses = step_losses(
            self.method,
            self.labels,
            s_logits,
            teacher_logits=t_logits,
            student_feats=s_feats,
            teacher_feats=t_feats,
            thresholds=self.thresholds,
            num_old=NUM_OLD,
            num_seen=NUM_OLD + NUM_NEW,
            num_new=NUM_NEW,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return losses["total"].detach()
