"""One incremental training step: data, model, teacher, losses, DDP, AMP, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lgkd_core import provenance
from lgkd_core.engine import distributed as D
from lgkd_core.engine.checkpoint import (
    StateStore,
    config_digest,
    load_model_file,
    safe_load,
    save_model_file,
)
from lgkd_core.engine.inputs import to_device, train_loader
from lgkd_core.engine.progress import Progress
from lgkd_core.engine.schedule import make_optimizer, poly_lambda
from lgkd_core.engine.teacher import frozen_teacher, load_weights
from lgkd_core.losses.objective import step_losses
from lgkd_core.losses.pseudo import EntropyThresholds
from lgkd_core.losses.regularizers import (
    KINDS,
    add_penalty_grad,
    importance_weights,
    make_estimator,
)
from lgkd_core.methods import MethodConfig, get_method
from lgkd_core.models import build_model, init_balanced, resolve_norm
from lgkd_core.models.imagenet import init_backbone
from lgkd_core.tasks import get_task

log = logging.getLogger("lgkd_core.train")

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses for too many consecutive iterations."""


# Exit status of a step stopped by SIGTERM/SIGUSR1 after saving its state (128 + SIGTERM, what a
# shell reports for a job terminated by it): Snakemake counts the attempt as failed and its retry
# resumes from the saved iteration.
EXIT_STOPPED = 143
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequested:
    """Set by SIGTERM or SIGUSR1 (SLURM's warning before a time limit or a preemption); the
    training loop polls it after each iteration. Installed in the main thread only."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequested:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signal = signum

    def requested(self, ctx: D.DistContext) -> bool:
        """Whether any rank was signalled (all ranks agree, so they stop at the same iteration)."""
        flag = self.signal is not None
        if ctx.distributed:
            t = torch.tensor([float(flag)], device=ctx.device)
            torch.distributed.all_reduce(t)
            flag = bool(t.item())
        return flag


@dataclass
class TrainConfig:
    """Everything one training step needs. ``batch_size`` is the global batch over all ranks.

    ``importance`` (step 0 only): also gather the importance statistics of all three weight
    regularisers (EWC's Fisher, PI's path integral, RW's score and Fisher) into ``model.pt``, so
    that one step 0 serves every method of a setting. It does not change the weights; it costs
    7 extra parameter-sized buffers on the device (PI 3: start and previous weights, path
    integral; EWC 1 + RW 3: Fisher, Fisher, score, previous weights) and makes ``model.pt`` 5
    times the size of the weights alone.
    """

    dataset: str = field(metadata={"help": "voc, ade or synthetic"})
    task: str = field(metadata={"help": "e.g. 15-1, 100-10, offline; a class order: 15-5s_b"})
    step: int = field(metadata={"help": "0 (the base classes) or an incremental step"})
    method: str = field(metadata={"help": "a preset: `python -m lgkd_core methods`"})
    data_root: Path = field(metadata={"help": "folder holding the datasets"})
    out: Path = field(metadata={"help": "step folder; model.pt goes there"})
    splits: Path | None = field(
        default=None, metadata={"help": "folder with the step{s}-train.txt lists"}
    )
    teacher: Path | None = field(default=None, metadata={"help": "model.pt of the previous step"})
    state_dir: Path | None = field(
        default=None, metadata={"help": "epoch and iteration checkpoints (unset: OUT/state)"}
    )
    pretrained: str | None = field(
        default=None,
        metadata={
            "help": "step 0's backbone start: iabn (DATA_ROOT/pretrained/resnet101_iabn_sync."
            "pth.tar, MD5-checked), torchvision (its ImageNet weights), none (random weights, "
            "with a warning; unset too) or the path of a backbone checkpoint"
        },
    )
    pretrained_md5: str | None = field(
        default=None,
        metadata={"help": "expected MD5 of the In-Place ABN file (unset: the published one)"},
    )
    epochs: int = 30
    batch_size: int = field(default=24, metadata={"help": "global batch over all processes"})
    lr: float | None = field(
        default=None, metadata={"help": "unset: 0.01/0.001 (VOC), 0.02/0.002 (ADE)"}
    )
    weight_decay: float = 1e-4
    crop_size: int = 512
    backbone: str = field(default="resnet101", metadata={"help": "resnet18/34/50/101[_wF]"})
    head_channels: int = 256
    norm: str = field(
        default="auto", metadata={"choices": ("auto", "abn", "iabn", "iabn_sync", "bn")}
    )
    output_stride: int = field(default=16, metadata={"choices": (8, 16)})
    amp: str = field(default="off", metadata={"choices": ("off", "fp16", "bf16")})
    workers: int = field(default=4, metadata={"help": "DataLoader workers per process"})
    seed: int = 42
    overlap: bool = field(
        default=True,
        metadata={"flags": ("--overlap", "--disjoint"), "help": "the overlap protocol"},
    )
    method_overrides: dict = field(
        default_factory=dict,
        metadata={
            "flag": "--set",
            "pairs": True,
            "help": "override a method setting, e.g. --set prev_kd=5 --set pod_factor=0.001",
        },
    )
    importance: bool = field(
        default=False,
        metadata={"help": "step 0: also gather the EWC/PI/RW importance statistics"},
    )
    checkpoint_every: int = field(default=0, metadata={"help": "iterations (0: every epoch)"})
    max_nonfinite: int = field(
        default=20, metadata={"help": "consecutive non-finite iterations before stopping"}
    )
    deterministic: bool = field(
        default=True, metadata={"help": "deterministic algorithms (bit-identical resume)"}
    )
    channels_last: bool = False
    compile: bool = field(default=False, metadata={"help": "torch.compile student and teacher"})
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    log_every: int = field(default=10, metadata={"help": "iterations between progress lines"})
    tensorboard: bool = False

    def default_lr(self) -> float:
        """The reference's learning rates: VOC-like 0.01 / 0.001, ADE 0.02 / 0.002."""
        base = 0.02 if self.dataset == "ade" else 0.01
        return base if self.step == 0 else base / 10

    def digest(self) -> str:
        """Identity of the run for resuming: every field that changes the result."""
        skip = {"out", "state_dir", "workers", "log_every", "tensorboard", "device"}
        if not self.importance:
            skip.add("importance")  # the digests of runs from before the option stay the same
        fields = {
            k: str(v) if isinstance(v, Path) else v
            for k, v in dataclasses.asdict(self).items()
            if k not in skip
        }
        return config_digest(fields)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def set_determinism(enabled: bool, device: torch.device) -> None:
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DistributedDataParallel) else model


def _all_finite(value: torch.Tensor, ctx: D.DistContext) -> bool:
    flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if ctx.distributed:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


class StepTrainer:
    """Runs one step; ``run()`` returns the path of the written ``model.pt``."""

    def __init__(self, cfg: TrainConfig, ctx: D.DistContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        self.task = get_task(cfg.dataset, cfg.task)
        self.task.new_classes(cfg.step)  # validates the step
        self.method: MethodConfig = get_method(
            cfg.method, cfg.dataset, cfg.task, cfg.method_overrides
        )
        self.lr = cfg.lr if cfg.lr is not None else cfg.default_lr()
        self.norm = resolve_norm(cfg.norm, self.device)
        self.arch = {
            "backbone": cfg.backbone,
            "norm": self.norm,
            "output_stride": cfg.output_stride,
            "head_channels": cfg.head_channels,
        }
        self.autocast_dtype = AMP_DTYPES.get(cfg.amp)
        if cfg.amp not in ("off", *AMP_DTYPES):
            raise ValueError(f"amp must be one of off, fp16, bf16 (got {cfg.amp!r})")
        if cfg.batch_size % ctx.world_size:
            raise ValueError(
                f"batch_size {cfg.batch_size} (global) is not divisible by the {ctx.world_size} "
                f"processes; choose a multiple of {ctx.world_size}"
            )
        self.batch_per_rank = cfg.batch_size // ctx.world_size
        if self.batch_per_rank < 2:
            raise ValueError(
                f"batch_size {cfg.batch_size} gives {self.batch_per_rank} image per process; "
                "DeepLabV3's pooling-branch norm needs at least 2 per process"
            )
        if cfg.step > 0 and cfg.teacher is None:
            raise ValueError(f"step {cfg.step} needs --teacher (the step {cfg.step - 1} model.pt)")
        self.state = StateStore(cfg.state_dir or Path(cfg.out) / "state")
        self.model_path = Path(cfg.out) / "model.pt"

    # -- setup ---------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg, task, step = self.cfg, self.task, self.cfg.step
        model = build_model(classes_per_step=task.classes_per_step(step), **self.arch)
        self.teacher = None
        if step == 0:
            self.init, self.init_source = init_backbone(
                model, cfg.pretrained, backbone=cfg.backbone, data_root=cfg.data_root,
                md5=cfg.pretrained_md5, announce=self.ctx.is_main,
            )  # fmt: skip
        else:
            self.teacher = frozen_teacher(cfg.teacher, task, step, self.arch, self.device)
            # Steps >= 1 carry the chain's step-0 initialisation forward.
            self.init, self.init_source = self.teacher.step0_init, None
            load_weights(
                model, self.teacher.state_dict(), cfg.teacher, allow_missing_prefix=f"cls.{step}."
            )
            if self.method.init_balanced:
                init_balanced(model, task.classes_per_step(step)[-1])
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.channels_last)
        self.model = model
        self._build_regularizers()
        self.optimizer = make_optimizer(model, self.lr, cfg.weight_decay)
        self.loader, self.sampler = train_loader(
            cfg.dataset,
            cfg.data_root,
            task,
            step,
            cfg.crop_size,
            self.batch_per_rank,
            self.ctx.rank,
            self.ctx.world_size,
            cfg.seed,
            cfg.workers,
            cfg.splits,
            cfg.overlap,
            pin_memory=self.device.type == "cuda",
        )
        self.iters_per_epoch = len(self.loader)
        self.total_iters = self.iters_per_epoch * cfg.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, poly_lambda(self.total_iters)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.net: nn.Module = model
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(
                model, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True
            )
        if cfg.compile:
            self.net = torch.compile(self.net)
            if self.teacher is not None:
                self.teacher = torch.compile(self.teacher)
        self.thresholds: torch.Tensor | None = None

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    # -- resume --------------------------------------------------------------------------------
    def _state_dict(self, epoch: int, batch: int, global_iter: int) -> dict:
        return {
            "digest": self.cfg.digest(),
            "epoch": epoch,
            "batch": batch,
            "global_iter": global_iter,
            "model": _unwrap(self.net).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "thresholds": self.thresholds,
            "regularizers": {k: e.state_dict() for k, e in self.estimators.items()},
            "rng_torch": torch.get_rng_state(),
        }

    def _save_state(self, epoch: int, batch: int, global_iter: int) -> None:
        if self.ctx.is_main:
            path = self.state.save(global_iter, self._state_dict(epoch, batch, global_iter))
            log.info("checkpoint %s (epoch %d, batch %d)", path, epoch, batch)
        D.barrier(self.ctx)

    def _checkpoint_if_finite(
        self, epoch: int, batch: int, global_iter: int, nonfinite: int
    ) -> bool:
        """Save a checkpoint unless inside a non-finite streak or with non-finite weights.

        Saving then would prune the last good checkpoint (only the newest are kept) and a resume
        would restart from the broken state.
        """
        finite = nonfinite == 0 and _all_finite(
            torch.stack([p.detach().float().abs().sum() for p in self.model.parameters()]),
            self.ctx,
        )
        if not finite:
            if self.ctx.is_main:
                log.warning(
                    "not checkpointing iteration %d: losses or weights are not finite",
                    global_iter,
                )
            return False
        self._save_state(epoch, batch, global_iter)
        return True

    def _try_resume(self) -> tuple[int, int, int]:
        found = self.state.latest(self.cfg.digest()) if self.ctx.is_main else None
        found = D.broadcast_object(self.ctx, None if found is None else str(found[0]))
        if found is None:
            return 0, 0, 0
        path = Path(found)
        state = safe_load(path, map_location="cpu")
        _unwrap(self.net).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.thresholds = state["thresholds"]
        if self.thresholds is not None:
            self.thresholds = self.thresholds.to(self.device)
        for kind, estimator in self.estimators.items():
            estimator.load_state_dict(state["regularizers"][kind])
        torch.set_rng_state(state["rng_torch"])
        log.info(
            "resuming step %d from %s: epoch %d, batch %d (iteration %d of %d)",
            self.cfg.step,
            path,
            state["epoch"],
            state["batch"],
            state["global_iter"],
            self.total_iters,
        )
        return state["epoch"], state["batch"], state["global_iter"]

    # -- weight regularisers (EWC, PI, RW) -------------------------------------------------------
    def _trainable(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _build_regularizers(self) -> None:
        """Importance estimators and, at steps >= 1, the penalty of EWC / PI / RW.

        Step 0 tracks the method's own regulariser, or all three with ``cfg.importance`` (one
        step 0 shared by every method of a setting); there is no penalty, the weights are those
        of a run without tracking. Step t >= 1 of a regularised method penalises with the
        statistics in the teacher's ``model.pt`` and tracks its own for step t + 1. Every rank
        holds the same state: the estimators read DDP's all-reduced gradients.
        """
        cfg, m = self.cfg, self.method
        self.estimators: dict = {}
        self.reg_weights: dict[str, torch.Tensor] | None = None
        self.reg_old: dict[str, torch.Tensor] | None = None
        params = self._trainable()
        if cfg.step == 0:
            if cfg.importance:
                kinds = list(KINDS)
            else:
                kinds = [m.regularizer] if m.uses_regularizer else []
            for kind in kinds:
                self.estimators[kind] = make_estimator(kind, params, m.reg_alpha, m.reg_iterations)
            if kinds and self.ctx.is_main:
                log.info("step 0 gathers the importance statistics of %s", ", ".join(kinds))
            return
        if cfg.importance and self.ctx.is_main:
            log.warning("--importance only applies to step 0; ignored at step %d", cfg.step)
        if not m.uses_regularizer:
            return
        previous = (load_model_file(cfg.teacher).get("regularizers") or {}).get(m.regularizer)
        if previous is None:
            raise ValueError(
                f"method {m.name} needs the {m.regularizer.upper()} importance statistics of the "
                f"previous step, but {cfg.teacher} holds none: train step 0 with --importance "
                "(workflow setting step0_importance: true), or with this method"
            )
        # The teacher's own (frozen) tensors are the old weights: no copy.
        self.reg_old = {n: p.detach() for n, p in self.teacher.named_parameters()}
        self.estimators[m.regularizer] = make_estimator(
            m.regularizer, params, m.reg_alpha, m.reg_iterations, self.reg_old, previous
        )
        weights = importance_weights(m.regularizer, previous, m.reg_normalize)
        for n, w in weights.items():
            if n in params and w.shape != params[n].shape:
                raise ValueError(
                    f"{cfg.teacher}: {m.regularizer} importance of {n} has shape "
                    f"{tuple(w.shape)}, the parameter {tuple(params[n].shape)}"
                )
        self.reg_weights = {n: w.to(self.device) for n, w in weights.items() if n in params}

    def _regularize(self) -> torch.Tensor | None:
        """Feed the estimators the main loss's gradients, then add the penalty's gradient.

        Returns ``reg_importance * penalty`` at steps >= 1 of a regularised method, else None.
        """
        # Unscale first: the statistics need true gradients (GradScaler's step() then knows
        # they are unscaled and does not divide again).
        self.scaler.unscale_(self.optimizer)
        params = self._trainable()
        grads = {n: p.grad for n, p in params.items()}
        present = [g.isfinite().all() for g in grads.values() if g is not None]
        # Skip the update on overflowed (fp16) gradients: one inf would stay in the Fisher.
        if self.estimators and present and bool(torch.stack(present).all()):
            for estimator in self.estimators.values():
                estimator.update(params, grads)
        if self.reg_weights is None:
            return None
        # The reference backpropagates the penalty in a second (scaled) backward after the
        # update. Its gradient is 2 * importance * w * (theta - theta_old), added here directly:
        # a second backward would go through GradScaler after unscale_ (mixing scaled and
        # unscaled gradients) and, under DDP, trigger another all-reduce for a value every rank
        # can compute itself (the weights are identical everywhere).
        return add_penalty_grad(params, self.reg_old, self.reg_weights, self.method.reg_importance)

    # -- pseudo-label thresholds ---------------------------------------------------------------
    @torch.no_grad()
    def _compute_thresholds(self) -> torch.Tensor:
        m = self.method
        acc = EntropyThresholds(
            self.task.num_classes(self.cfg.step - 1),
            bins=m.pseudo_bins,
            method=m.median,
            device=self.device,
        )
        self.sampler.set_epoch(0)
        for batch in self.loader:
            images, labels = to_device(batch, self.device, self.cfg.channels_last)
            with self._autocast():
                logits = self.teacher(images)
            acc.update(logits.float(), labels, num_seen=self.task.num_classes(self.cfg.step))
        acc.all_reduce()
        thresholds = acc.compute(floor=m.pseudo_threshold)
        log.info("entropy thresholds per old class: %s", thresholds.tolist())
        return thresholds

    # -- loop ----------------------------------------------------------------------------------
    def _losses(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        step, task, m = self.cfg.step, self.task, self.method
        feats = m.needs_features and step > 0
        t_logits = t_feats = None
        if self.teacher is not None:
            with torch.no_grad(), self._autocast():
                out = self.teacher(images, return_features=feats)
            t_logits, t_feats = out if feats else (out, None)
        with self._autocast():
            out = self.net(images, return_features=feats)
        s_logits, s_feats = out if feats else (out, None)
        return step_losses(
            m,
            labels,
            s_logits,
            teacher_logits=t_logits,
            student_feats=s_feats,
            teacher_feats=t_feats,
            thresholds=self.thresholds,
            num_old=task.num_classes(step - 1) if step > 0 else 0,
            num_seen=task.num_classes(step),
            num_new=task.classes_per_step(step)[-1],
        )

    def _optimize(self, losses: dict[str, torch.Tensor]) -> bool:
        """Backward and optimizer step; False when the step was skipped as non-finite.

        With a weight regulariser, adds its penalty to ``losses`` as ``reg`` (and to ``total``,
        for the log) between the backward and the step (:meth:`_regularize`).
        """
        total = losses["total"]
        self.optimizer.zero_grad(set_to_none=True)
        if not _all_finite(total, self.ctx):
            return False
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.scale(total).backward()
        if self.estimators or self.reg_weights is not None:
            reg = self._regularize()
            if reg is not None:
                losses["reg"] = reg
                losses["total"] = total.detach() + reg
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # With fp16 the scaler skips steps whose gradients overflowed and lowers its scale.
        return not (self.scaler.is_enabled() and self.scaler.get_scale() < scale_before)

    def run(self) -> Path:
        with StopRequested() as stop:
            return self._run(stop)

    def _run(self, stop: StopRequested) -> Path:
        cfg = self.cfg
        self.started = time.monotonic()
        self.hosts = provenance.hosts()  # a collective: every rank
        if self.ctx.is_main:
            log.info(
                "step %d: world size %d on %s, %d threads per rank, global batch %d (%d per "
                "rank), %d loader workers per rank",
                cfg.step,
                self.ctx.world_size,
                ", ".join(sorted(set(self.hosts))),
                torch.get_num_threads(),
                cfg.batch_size,
                self.batch_per_rank,
                cfg.workers,
            )
        set_determinism(cfg.deterministic, self.device)
        seed_everything(cfg.seed)
        self._build()
        epoch, batch0, global_iter = self._try_resume()
        if self.teacher is not None and self.method.pseudo == "entropy" and self.thresholds is None:
            self.thresholds = self._compute_thresholds()
        progress = Progress(
            self.total_iters,
            global_iter,
            cfg.batch_size,
            every=cfg.log_every,
            enabled=self.ctx.is_main,
            tensorboard_dir=Path(cfg.out) / "tensorboard" if cfg.tensorboard else None,
        )
        last_ckpt = (
            f"{self.state.path(global_iter)} (iteration {global_iter}, resumed)"
            if global_iter
            else "none"
        )
        nonfinite = 0
        self.net.train()
        while epoch < cfg.epochs:
            self.sampler.set_epoch(epoch, start_sample=batch0 * self.batch_per_rank)
            batch_idx = batch0
            for batch in self.loader:
                progress.data_ready()
                images, labels = to_device(batch, self.device, cfg.channels_last)
                losses = self._losses(images, labels)
                nonfinite = 0 if self._optimize(losses) else nonfinite + 1
                if nonfinite >= cfg.max_nonfinite:
                    raise NonFiniteLossError(
                        f"step {cfg.step}: {nonfinite} consecutive iterations with non-finite "
                        f"loss or gradients, at iteration {global_iter + 1} (epoch {epoch}); "
                        f"last good checkpoint: {last_ckpt}. Lower the learning rate, or use "
                        "amp bf16/off."
                    )
                self.scheduler.step()
                global_iter += 1
                batch_idx += 1
                progress.step(
                    {k: float(v.detach()) for k, v in losses.items()},
                    self.optimizer.param_groups[0]["lr"],
                )
                if cfg.checkpoint_every and global_iter % cfg.checkpoint_every == 0:
                    if batch_idx < self.iters_per_epoch:
                        if self._checkpoint_if_finite(epoch, batch_idx, global_iter, nonfinite):
                            last_ckpt = f"{self.state.path(global_iter)} (iteration {global_iter})"
                if stop.requested(self.ctx):
                    self._stop(stop, epoch, batch_idx, global_iter, nonfinite, last_ckpt)
            epoch += 1
            batch0 = 0
            if self._checkpoint_if_finite(epoch, 0, global_iter, nonfinite):
                where = f"iteration {global_iter}, end of epoch {epoch - 1}"
                last_ckpt = f"{self.state.path(global_iter)} ({where})"
        stats = progress.close()
        if self.ctx.is_main:
            log.info(
                "step %d done: %d iterations, %.1f images/s, %.0f%% waiting for data",
                cfg.step,
                global_iter,
                stats["images_per_second"],
                100 * stats["data_wait_fraction"],
            )
            self._write_model(stats)
            self.state.clear()
        D.barrier(self.ctx)
        return self.model_path

    def _stop(
        self,
        stop: StopRequested,
        epoch: int,
        batch: int,
        global_iter: int,
        nonfinite: int,
        last_ckpt: str,
    ) -> None:
        """Save the state at this iteration and exit with EXIT_STOPPED (all ranks)."""
        if batch >= self.iters_per_epoch:  # the epoch's last batch: resume at the next epoch
            epoch, batch = epoch + 1, 0
        saved = self._checkpoint_if_finite(epoch, batch, global_iter, nonfinite)
        D.barrier(self.ctx)
        name = signal.Signals(stop.signal).name if stop.signal else "a signal on another rank"
        where = (
            f"saved {self.state.path(global_iter)} (iteration {global_iter})"
            if saved
            else f"not finite, so nothing saved; last good checkpoint: {last_ckpt}"
        )
        log.warning(
            "stopping step %d on %s: %s; the same command resumes from there",
            self.cfg.step,
            name,
            where,
        )
        raise SystemExit(EXIT_STOPPED)

    def _write_model(self, stats: dict) -> None:
        cfg, task = self.cfg, self.task
        state = {k: v.detach().cpu() for k, v in _unwrap(self.net).state_dict().items()}
        config = {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()
        }
        meta = {
            "dataset": task.dataset,
            "task": task.name,
            "step": cfg.step,
            "method": self.method.name,
            "order": task.order(cfg.step),
            "classes_per_step": task.classes_per_step(cfg.step),
            **{k: v for k, v in self.arch.items() if k != "norm"},
            "norm": self.norm,
            "config": config,
            "config_digest": cfg.digest(),
            "train_stats": {k: float(v) for k, v in stats.items()},
            "init": self.init,  # how the chain's step 0 started (lgkd_core.models.imagenet)
            "init_source": self.init_source,
            "provenance": provenance.collect(
                hosts=self.hosts,
                world_size=self.ctx.world_size,
                threads_per_rank=torch.get_num_threads(),
                loader_workers_per_rank=cfg.workers,
                global_batch=cfg.batch_size,
                wall_time_s=round(time.monotonic() - self.started, 3),
                config=config,
            ),
        }
        if self.estimators:
            params = self._trainable()
            meta["regularizers"] = {k: e.export(params) for k, e in self.estimators.items()}
        save_model_file(self.model_path, state, meta)
        log.info("wrote %s", self.model_path)

    def release(self) -> None:
        """Drop models and optimizer (before the process group is destroyed)."""
        names = ("net", "model", "teacher", "optimizer", "scheduler", "loader", "estimators")
        for name in (*names, "reg_weights", "reg_old"):
            if hasattr(self, name):
                delattr(self, name)


def train(cfg: TrainConfig) -> Path:
    """Train one step (alone or under torchrun) and return the path of its ``model.pt``."""
    ctx = D.setup_distributed(cfg.device)
    trainer = StepTrainer(cfg, ctx)
    try:
        return trainer.run()
    finally:
        trainer.release()
        del trainer
        D.shutdown(ctx)
