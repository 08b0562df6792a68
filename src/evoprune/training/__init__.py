"""The one training core of evoprune: short AdamW runs on token blocks (DarwinLM's training-aware
selection) that later runs (recovery, supernet training, distributed) build on.

Layers, each reusable alone:
  TrainConfig -> build_optimizer / build_scheduler -> compute_loss -> train_step -> train_on_blocks.
Every training loop (DarwinLM's offspring training, recovery training under Accelerate, whittle's supernet)
takes its blocks with `micro_batches` and ends each optimizer step with `apply_step`.
"""

from .batches import micro_batches, per_process_batch
from .cached_teacher import CachedTeacher, cached_kd_loss
from .config import TrainConfig
from .losses import LossParts, compute_loss, hidden_loss, kd_loss, lm_loss
from .loop import TokenPlan, TrainResult, plan_tokens, train_on_blocks
from .masks import ParamMasks
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups
from .step import StepResult, apply_step, train_mode, train_step

__all__ = [
    "CachedTeacher", "apply_step", "micro_batches", "per_process_batch", "LossParts", "ParamMasks", "StepResult", "TokenPlan", "TrainConfig", "TrainResult",
    "build_optimizer", "build_scheduler", "cached_kd_loss", "compute_loss", "hidden_loss", "kd_loss", "lr_factor",
    "lm_loss", "param_groups", "plan_tokens", "train_mode", "train_on_blocks", "train_step",
]
