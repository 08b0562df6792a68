"""Adapter for OLMo-2: post-norm layers and q/k norms over all heads of a layer.

The norm after each block (`post_attention_layernorm`, `post_feedforward_layernorm`) belongs to that
block. `q_norm` / `k_norm` normalize the whole projected q / k, so their weights are sliced with the
kept heads; the sliced model then normalizes over the kept heads only, which makes it differ from the
dense model with those heads' outputs zeroed (the tests compare it with a dense model whose q/k norms
are restricted to the kept heads).
"""

from __future__ import annotations

from transformers import Olmo2Config, Olmo2ForCausalLM

from .adapter import register_adapter
from .hf.configuration_evoprune_olmo2 import EvopruneOlmo2Config
from .hf.modeling_evoprune_olmo2 import EvopruneOlmo2ForCausalLM
from .layer_tables import LayerTableAdapter, Slicing
from .llama import Family

FAMILIES = {"olmo2": Family(Olmo2Config, Olmo2ForCausalLM, EvopruneOlmo2Config, EvopruneOlmo2ForCausalLM)}

LAYER_SLICES = {
    **{f"self_attn.{p}_proj.{kind}": Slicing(rows, cols, "attention")
       for p, rows in (("q", "q"), ("k", "kv"), ("v", "kv")) for kind, cols in (("weight", "h"), ("bias", None))},
    "self_attn.o_proj.weight": Slicing("h", "q", "attention"),
    "self_attn.o_proj.bias": Slicing("h", None, "attention"),
    "self_attn.q_norm.weight": Slicing("q", None, "attention"),
    "self_attn.k_norm.weight": Slicing("kv", None, "attention"),
    "post_attention_layernorm.weight": Slicing("h", None, "attention"),
    "mlp.gate_proj.weight": Slicing("n", "h", "mlp"),
    "mlp.up_proj.weight": Slicing("n", "h", "mlp"),
    "mlp.down_proj.weight": Slicing("h", "n", "mlp"),
    "post_feedforward_layernorm.weight": Slicing("h", None, "mlp"),
}


class Olmo2Adapter(LayerTableAdapter):
    name = "olmo2"
    model_types = ("olmo2", "evoprune_olmo2")
    families = FAMILIES
    layer_slices = LAYER_SLICES
    block_outputs_normalized = True

    def shape_flags(self, attns: list, mlps: list) -> dict:
        return dict(qkv_bias=any(a.q_proj.bias is not None for a in attns),
                    o_bias=any(a.o_proj.bias is not None for a in attns), qk_norm=True, qk_norm_whole=True)


register_adapter(Olmo2Adapter())
