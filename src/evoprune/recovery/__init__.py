"""Recovery training of a pruned model (`evoprune train`): distillation + LM, full or LoRA, on Accelerate."""

from .config import RecoveryConfig, RecoveryRunConfig
from .trainer import check_same_vocabulary, recover

__all__ = ["RecoveryConfig", "RecoveryRunConfig", "check_same_vocabulary", "recover"]
