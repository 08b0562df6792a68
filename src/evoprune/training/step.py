"""One optimizer step: forward / backward over the micro-batches, then `apply_step` (mask, clip, step, schedule),
which every training loop of evoprune ends its steps with."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..evaluation.blocks import model_device
from ..modes import train_mode  # noqa: F401  (part of evoprune.train's API)
from .cached_teacher import CachedTeacher
from .config import TrainConfig
from .losses import compute_loss
from .masks import ParamMasks


@dataclass
class StepResult:
    """What one optimizer step did. Losses are means over its micro-batches (nats)."""

    loss: float  # the objective that was minimised
    lm: float | None  # LM cross-entropy part (None when not computed)
    kd: float | None  # distillation part (None when not computed)
    grad_norm: float | None  # global grad norm before clipping (None when clipping is off)
    lr: float  # learning rate used by this step (first parameter group)
    micro_batches: int
    hidden: float | None = None  # hidden-state distillation part (None when not computed)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def train_step(model: nn.Module, micro_batches: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
               cfg: TrainConfig, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               teacher: nn.Module | CachedTeacher | None = None, masks: ParamMasks | None = None,
               accelerator: Any | None = None) -> StepResult:
    """Accumulate gradients over `micro_batches` and take one optimizer step.

    Each micro-batch ([batch, seq_len] token ids, any device) contributes loss / len(micro_batches),
    so the step minimises the mean over its micro-batches whatever their number (a short last step
    of a run is not down-weighted). Order: backward every micro-batch -> zero masked grads -> clip
    to cfg.grad_clip -> optimizer.step() -> re-zero masked weights -> scheduler.step() -> clear grads.

    The caller chooses the modes (`train_mode(model)`, teacher in eval mode); this function does not
    touch them, so a later loop (FSDP, LoRA, a supernet sampling `masks` per step) can reuse it.

    With an `accelerate.Accelerator` (model and optimizer prepared by it) the backward pass, the
    gradient synchronisation (skipped for all but the last micro-batch) and the clipping go through
    it, so the same step runs under DDP or FSDP; losses are then this process's share.
    """
    if not micro_batches:
        raise ValueError("train_step needs at least one micro-batch")
    device = model_device(model)
    n = len(micro_batches)
    totals, lms, kds, hiddens = [], [], [], []
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(micro_batches):
        last = i == n - 1
        sync = accelerator.no_sync(model) if accelerator is not None and not last else contextlib.nullcontext()
        with sync:
            parts = compute_loss(model, batch.to(device), cfg, teacher)
            if accelerator is not None:
                accelerator.backward(parts.total / n)
            else:
                (parts.total / n).backward()
        totals.append(float(parts.total.detach()))
        if parts.lm is not None:
            lms.append(float(parts.lm))
        if parts.kd is not None:
            kds.append(float(parts.kd))
        if parts.hidden is not None:
            hiddens.append(float(parts.hidden))
    grad_norm, lr = apply_step(optimizer, cfg.grad_clip, scheduler, masks, accelerator)
    return StepResult(_mean(totals), _mean(lms), _mean(kds), grad_norm, lr, n, _mean(hiddens))


def apply_step(optimizer: torch.optim.Optimizer, grad_clip: float | None,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, masks: ParamMasks | None = None,
               accelerator: Any | None = None) -> tuple[float | None, float]:
    """The end of every optimizer step in evoprune, once the gradients are accumulated: zero masked grads ->
    clip to `grad_clip` -> optimizer.step() -> re-zero masked weights -> scheduler.step() -> clear grads.

    Returns (global grad norm before clipping, or None without clipping; the learning rate used).
    """
    if masks is not None:
        masks.mask_grads_()
    grad_norm = None
    if grad_clip is not None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
        grad_norm = float(clip(params, grad_clip))
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if masks is not None:
        masks.apply_()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, lr
