"""Modeling code of a structurally pruned Gemma-2 / Gemma-3 text model (shipped inside exported checkpoints).

A Gemma layer wraps each block in two RMSNorms: `input_layernorm -> self_attn -> post_attention_layernorm`
and `pre_feedforward_layernorm -> mlp -> post_feedforward_layernorm`, each added to the residual stream.
Layers differ in query heads, KV heads and MLP width, and a layer may lack a block together with its two
norms. Attention (query_pre_attn_scalar, logit soft-capping, sliding windows, Gemma-3's q/k norms), MLP,
RMSNorm (1 + weight), the scaled embedding, RoPE (Gemma-3: a local base for sliding layers), masks, the KV
cache, final logit soft-capping and generation are the stock transformers classes of the source family.
This file imports only torch, transformers and its sibling `modeling_evoprune.py`, shipped beside it.
"""

import copy

from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.gemma2 import modeling_gemma2
from transformers.models.gemma3 import modeling_gemma3

from .configuration_evoprune import NO_ATTENTION
from .configuration_evoprune_gemma import EvopruneGemma2Config, EvopruneGemma3TextConfig
from .modeling_evoprune import (
    CACHE_ARG,
    PrunedForCausalLMMixin,
    PrunedModelMixin,
    layer_config,
    layer_type,
)


def attention_layers_config(config):
    """A shallow copy of `config` whose layer_types list only the attention layers (RoPE is built per type)."""
    c = copy.copy(config)
    c.layer_types = [t for t in config.layer_types if t != NO_ATTENTION]
    return c


class PrunedGemmaDecoderLayerMixin:
    """Gemma's sandwich-norm residual layer whose attention and/or MLP block may be absent."""

    family = prefix = None

    def __init__(self, config, layer_idx):
        GradientCheckpointingLayer.__init__(self)
        part = layer_config(config, layer_idx)
        norm = getattr(self.family, f"{self.prefix}RMSNorm")
        self.config = config
        self.hidden_size = config.hidden_size
        self.layer_idx = layer_idx
        self.attention_type = layer_type(config, layer_idx)
        self.self_attn = self.input_layernorm = self.post_attention_layernorm = None
        if part.num_attention_heads > 0:
            self.self_attn = getattr(self.family, f"{self.prefix}Attention")(config=part, layer_idx=layer_idx)
            self.self_attn.config = config  # so attn_implementation chosen at load time applies
            self.input_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)
            self.post_attention_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = self.pre_feedforward_layernorm = self.post_feedforward_layernorm = None
        if part.intermediate_size > 0:
            self.mlp = getattr(self.family, f"{self.prefix}MLP")(part)
            self.pre_feedforward_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)
            self.post_feedforward_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, position_ids=None,
                past_key_values=None, cache=None, **kwargs):
        if self.self_attn is not None:
            attn_out, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{CACHE_ARG: cache if cache is not None else past_key_values},
                **kwargs,
            )
            hidden_states = hidden_states + self.post_attention_layernorm(attn_out)
        if self.mlp is not None:
            mlp_out = self.mlp(self.pre_feedforward_layernorm(hidden_states))
            hidden_states = hidden_states + self.post_feedforward_layernorm(mlp_out)
        return hidden_states


class PrunedGemmaModelMixin(PrunedModelMixin):
    """The decoder stack of `PrunedModelMixin` with Gemma's scaled embedding and, for Gemma-3, a RoPE per attention type."""

    family = prefix = decoder_layer_class = None
    rope_per_layer_type = False  # Gemma-3: local RoPE base for sliding layers, global base for full ones

    def __init__(self, config):
        getattr(self.family, f"{self.prefix}PreTrainedModel").__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = getattr(self.family, f"{self.prefix}TextScaledWordEmbedding")(
            config.vocab_size, config.hidden_size, self.padding_idx, embed_scale=config.hidden_size**0.5)
        self.layers = nn.ModuleList([self.decoder_layer_class(config, i) for i in range(config.num_hidden_layers)])
        self.norm = getattr(self.family, f"{self.prefix}RMSNorm")(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = getattr(self.family, f"{self.prefix}RotaryEmbedding")(attention_layers_config(config))
        self.gradient_checkpointing = False
        self.post_init()

    def position_embeddings(self, hidden_states, position_ids):
        """RoPE (cos, sin) per attention type present in the stack."""
        types = {layer.attention_type for layer in self.layers if layer.self_attn is not None}
        if self.rope_per_layer_type:
            return {t: self.rotary_emb(hidden_states, position_ids, t) for t in types}
        shared = self.rotary_emb(hidden_states, position_ids)
        return {t: shared for t in types}



def _family_classes(family, prefix, stock_model, config_class, rope_per_layer_type):
    """Decoder layer, model and causal-LM classes of one Gemma family, named Evoprune<Prefix>..."""
    stock_layer = getattr(family, f"{prefix}DecoderLayer")
    layer = type(f"Evoprune{prefix}DecoderLayer", (PrunedGemmaDecoderLayerMixin, stock_layer),
                 {"family": family, "prefix": prefix, "__module__": __name__})
    shared = {"family": family, "prefix": prefix, "config_class": config_class, "__module__": __name__,
              "_no_split_modules": [layer.__name__]}
    model = type(f"Evoprune{stock_model.__name__}", (PrunedGemmaModelMixin, stock_model),
                 {**shared, "decoder_layer_class": layer, "rope_per_layer_type": rope_per_layer_type})
    causal_lm = type(f"Evoprune{prefix}ForCausalLM", (PrunedForCausalLMMixin, getattr(family, f"{prefix}ForCausalLM")),
                     {**shared, "model_class": model})
    return layer, model, causal_lm


EvopruneGemma2DecoderLayer, EvopruneGemma2Model, EvopruneGemma2ForCausalLM = _family_classes(
    modeling_gemma2, "Gemma2", modeling_gemma2.Gemma2Model, EvopruneGemma2Config, rope_per_layer_type=False)
EvopruneGemma3DecoderLayer, EvopruneGemma3TextModel, EvopruneGemma3ForCausalLM = _family_classes(
    modeling_gemma3, "Gemma3", modeling_gemma3.Gemma3TextModel, EvopruneGemma3TextConfig, rope_per_layer_type=True)
