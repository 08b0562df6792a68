"""The one training core of evoprune: short AdamW runs on token blocks (DarwinLM's training-aware
selection) that later runs (recovery, supernet training, distributed) build on.

Layers, each reusable alone:
  TrainConfig -> build_optimizer / build_scheduler -> compute_loss -> train_step -> train_on_blocks.
"""

from .cached_teacher import CachedTeacher, cached_kd_loss
from .config import TrainConfig
from .losses import LossParts, compute_loss, hidden_loss, kd_loss, lm_loss
from .loop import TokenPlan, TrainResult, plan_tokens, train_on_blocks
from .masks import ParamMasks
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups
from .step import StepResult, train_mode, train_step

__all__ = [
    "CachedTeacher", "LossParts", "ParamMasks", "StepResult", "TokenPlan", "TrainConfig", "TrainResult",
    "build_optimizer", "build_scheduler", "cached_kd_loss", "compute_loss", "hidden_loss", "kd_loss", "lr_factor",
    "lm_loss", "param_groups", "plan_tokens", "train_mode", "train_on_blocks", "train_step",
]
