"""AdamW and the learning-rate schedule, built from a TrainConfig (shared by every training loop)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..errors import UserError
from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (matrices, embeddings) and an undecayed one.

    Only parameters with `requires_grad` are included (freeze a base model and leave adapters
    trainable for LoRA-style runs). Norm weights and biases (fewer than 2 dims) get no weight decay,
    as usual for transformers. Tied parameters appear once.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters (every parameter has requires_grad=False)")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """torch AdamW over the trainable parameters of `model` with cfg's lr, betas, eps and weight decay.

    foreach / fused are left to torch's defaults (plain per-parameter loop on CPU, foreach on CUDA);
    both are deterministic on CPU.
    """
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Multiplier of the peak lr used by optimizer step `step` (0-based) of a `total_steps`-step run.

    Warm-up: step s < W uses (s + 1) / (W + 1), so no step runs at lr 0 and step W is the first at
    the peak. After warm-up: 1 for "constant"; for "cosine", a half cosine from 1 at step W down to
    `min_lr_ratio` at step total_steps - 1.
    """
    warm = cfg.warmup_steps
    if step < warm:
        return (step + 1) / (warm + 1)
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - 1 - warm)
    progress = min(1.0, (step - warm) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> LambdaLR:
    """LambdaLR applying `lr_factor`; call `scheduler.step()` once after every optimizer step."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise UserError(f"total_steps must be a positive integer, got {total_steps!r}")
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))
