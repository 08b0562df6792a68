"""Adapter for Phi-3 / Phi-3.5: the Llama layer with fused `qkv_proj` and `gate_up_proj`.

A kept head keeps its rows in each part of `qkv_proj` ([q heads | k heads | v heads]), a kept neuron
its rows in both halves of `gate_up_proj` ([gate | up]). Partial rotary factors and longrope scaling
are carried over unchanged in the pruned config.
"""

from __future__ import annotations

from transformers import Phi3Config, Phi3ForCausalLM

from .adapter import register_adapter
from .hf.configuration_evoprune_phi3 import EvoprunePhi3Config
from .hf.modeling_evoprune_phi3 import EvoprunePhi3ForCausalLM
from .layer_tables import LayerTableAdapter, Slicing
from .llama import Family

FAMILIES = {"phi3": Family(Phi3Config, Phi3ForCausalLM, EvoprunePhi3Config, EvoprunePhi3ForCausalLM)}

LAYER_SLICES = {
    "input_layernorm.weight": Slicing("h", None, "attention"),
    "self_attn.qkv_proj.weight": Slicing("qkv", "h", "attention"),
    "self_attn.o_proj.weight": Slicing("h", "q", "attention"),
    "post_attention_layernorm.weight": Slicing("h", None, "mlp"),
    "mlp.gate_up_proj.weight": Slicing("gate_up", "h", "mlp"),
    "mlp.down_proj.weight": Slicing("h", "n", "mlp"),
}


class Phi3Adapter(LayerTableAdapter):
    name = "phi3"
    model_types = ("phi3", "evoprune_phi3")
    families = FAMILIES
    layer_slices = LAYER_SLICES

    def kv_width(self, attn, q_width: int) -> int:
        return (attn.qkv_proj.out_features - q_width) // 2


register_adapter(Phi3Adapter())
