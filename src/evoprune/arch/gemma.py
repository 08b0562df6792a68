"""Adapter for Gemma-2 (`gemma2`) and Gemma-3 text models (`gemma3_text`).

Their layers name their parts as Llama's do (`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`), so
the Llama adapter's slicing applies; what differs is that each block carries two RMSNorms (before and
after it: removing the block removes both) and the pruned modeling code (`hf/modeling_evoprune_gemma.py`).
Soft-capping, query_pre_attn_scalar, sliding/global layers and Gemma-3's q/k norms and local RoPE base
are the stock classes' own, carried over in the config.

Hidden-size pruning is refused: the embedding is scaled by sqrt(hidden_size) and the pruned model would
rescale it by the square root of the kept channels, a different model from the masked dense one.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedModel

from ..errors import UserError
from .adapter import register_adapter
from .hf import configuration_evoprune_gemma as pruned_cfg
from .hf import modeling_evoprune_gemma as pruned_lm
from .llama import Family, LlamaFamilyAdapter, source_layer_type
from .shape import ModelShape
from .spec import SubnetSpec

FAMILIES = {
    "gemma2": Family(Gemma2Config, Gemma2ForCausalLM, pruned_cfg.EvopruneGemma2Config,
                     pruned_lm.EvopruneGemma2ForCausalLM),
    "gemma3_text": Family(Gemma3TextConfig, Gemma3ForCausalLM, pruned_cfg.EvopruneGemma3TextConfig,
                          pruned_lm.EvopruneGemma3ForCausalLM),
}

ATTENTION_SLICES = {
    "self_attn.q_proj.weight": ("q", "h"), "self_attn.q_proj.bias": ("q", None),
    "self_attn.k_proj.weight": ("kv", "h"), "self_attn.k_proj.bias": ("kv", None),
    "self_attn.v_proj.weight": ("kv", "h"), "self_attn.v_proj.bias": ("kv", None),
    "self_attn.o_proj.weight": ("h", "q"), "self_attn.o_proj.bias": ("h", None),
    "self_attn.q_norm.weight": (None, None), "self_attn.k_norm.weight": (None, None),
    "input_layernorm.weight": ("h", None), "post_attention_layernorm.weight": ("h", None),
}
MLP_SLICES = {
    "mlp.gate_proj.weight": ("n", "h"), "mlp.up_proj.weight": ("n", "h"), "mlp.down_proj.weight": ("h", "n"),
    "pre_feedforward_layernorm.weight": ("h", None), "post_feedforward_layernorm.weight": ("h", None),
}


class SoftCappedHead(nn.Module):
    """The LM head followed by Gemma-2's final logit soft-capping: cap * tanh(logits / cap)."""

    def __init__(self, lm_head: nn.Module, cap: float):
        super().__init__()
        self.lm_head, self.cap = lm_head, cap

    @property
    def weight(self) -> torch.Tensor:  # [vocab, hidden], as callers read it off an LM head
        return self.lm_head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lm_head(hidden) / self.cap) * self.cap


class GemmaFamilyAdapter(LlamaFamilyAdapter):
    name = "gemma"
    model_types = tuple(FAMILIES) + tuple(f"evoprune_{f}" for f in FAMILIES)
    families = FAMILIES
    layer_slices = {**ATTENTION_SLICES, **MLP_SLICES}
    attention_parts = ("self_attn.", "input_layernorm.", "post_attention_layernorm.")
    prunes_hidden = False
    block_outputs_normalized = True  # a norm sits between o_proj / down_proj and the residual add

    def shape(self, model: PreTrainedModel) -> ModelShape:
        return replace(super().shape(model), norms_per_block=2)

    def output_head(self, model: PreTrainedModel) -> nn.Module:
        cap = getattr(model.config, "final_logit_softcapping", None)
        return SoftCappedHead(model.get_output_embeddings(), cap) if cap else model.get_output_embeddings()

    def position_embeddings(self, model: PreTrainedModel, hidden: torch.Tensor, position_ids: torch.Tensor):
        rotary = model.model.rotary_emb
        if hasattr(rotary, "layer_types"):  # Gemma-3: one RoPE per attention type; layer 0's
            return rotary(hidden, position_ids, source_layer_type(model.config, 0))
        return rotary(hidden, position_ids)

    def slice(self, model: PreTrainedModel, spec: SubnetSpec,
              replace: dict[str, torch.Tensor] | None = None, share_embeddings: bool = False) -> PreTrainedModel:
        if spec.hidden is not None:
            raise UserError(f"hidden-size pruning is not supported for {model.config.model_type} models (their "
                            "embedding is scaled by sqrt(hidden_size)); keep every hidden channel")
        return super().slice(model, spec, replace, share_embeddings)


register_adapter(GemmaFamilyAdapter())
