"""Modeling code of a structurally pruned OLMo-2 model (shipped inside exported checkpoints).

OLMo-2 normalizes the output of each block before adding it to the residual stream
(`post_attention_layernorm`, `post_feedforward_layernorm`) and has no input norms; a missing block
takes its norm with it. Its q/k norms span all heads of the layer, so they are sized per layer like
the projections. Embedding, RoPE, masks and cache come from modeling_evoprune.py, attention and the
MLP from stock OLMo-2. This file imports only torch, transformers and its sibling modeling_evoprune.py.
"""

from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.olmo2 import modeling_olmo2

from .configuration_evoprune_olmo2 import EvopruneOlmo2Config
from .modeling_evoprune import (
    CACHE_ARG,
    PrunedForCausalLMMixin,
    PrunedModelMixin,
    layer_config,
    layer_type,
)


class EvopruneOlmo2DecoderLayer(modeling_olmo2.Olmo2DecoderLayer):
    """Post-norm residual layer whose attention and/or MLP block may be absent."""

    def __init__(self, config, layer_idx):
        GradientCheckpointingLayer.__init__(self)
        part = layer_config(config, layer_idx)
        norm = modeling_olmo2.Olmo2RMSNorm
        self.hidden_size = config.hidden_size
        self.attention_type = layer_type(config, layer_idx)
        self.self_attn = self.post_attention_layernorm = None
        if part.num_attention_heads > 0:
            self.self_attn = modeling_olmo2.Olmo2Attention(config=part, layer_idx=layer_idx)
            self.self_attn.config = config  # so attn_implementation chosen at load time applies
            self.post_attention_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = self.post_feedforward_layernorm = None
        if part.intermediate_size > 0:
            self.mlp = modeling_olmo2.Olmo2MLP(part)
            self.post_feedforward_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, cache=None, **kwargs):
        if self.self_attn is not None:
            attended, _ = self.self_attn(
                hidden_states=hidden_states,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{CACHE_ARG: cache if cache is not None else past_key_values},
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = hidden_states + self.post_attention_layernorm(attended)
        if self.mlp is not None:
            hidden_states = hidden_states + self.post_feedforward_layernorm(self.mlp(hidden_states))
        return hidden_states


class EvopruneOlmo2Model(PrunedModelMixin, modeling_olmo2.Olmo2Model):
    family, prefix, config_class = modeling_olmo2, "Olmo2", EvopruneOlmo2Config
    decoder_layer_class = EvopruneOlmo2DecoderLayer
    _no_split_modules = ["EvopruneOlmo2DecoderLayer"]


class EvopruneOlmo2ForCausalLM(PrunedForCausalLMMixin, modeling_olmo2.Olmo2ForCausalLM):
    family, prefix, config_class = modeling_olmo2, "Olmo2", EvopruneOlmo2Config
    model_class = EvopruneOlmo2Model
    _no_split_modules = ["EvopruneOlmo2DecoderLayer"]
