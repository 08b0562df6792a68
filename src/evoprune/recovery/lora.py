"""LoRA adapters on a (pruned) model with peft, merged back into plain weights for export."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from ..errors import UserError


def linear_module_names(model: nn.Module) -> set[str]:
    """The last name component of every nn.Linear in `model` (q_proj, down_proj, lm_head ...)."""
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Refuse target names that match no linear layer of `model` (e.g. a projection that pruning removed)."""
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise UserError(f"LoRA target module(s) {', '.join(missing)} do not exist in the pruned model; "
                        f"its linear layers are: {', '.join(sorted(available))} (set train.lora_targets)")


def add_lora(model: PreTrainedModel, targets: list[str], r: int, alpha: float, dropout: float) -> nn.Module:
    """Wrap `model` with trainable LoRA adapters on `targets`; every base weight is frozen."""
    from peft import LoraConfig, get_peft_model

    check_lora_targets(model, targets)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> PreTrainedModel:
    """Fold the adapters into the base weights and return the plain model (the pruned shape, no peft)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)
    return model
