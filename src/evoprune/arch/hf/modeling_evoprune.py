"""Modeling code of a structurally pruned Llama-family model (shipped inside exported checkpoints).

Layers differ in query heads, KV heads and MLP width, and a layer may lack its attention or its
MLP block. Attention, MLP, RMSNorm, RoPE, masks, the KV cache and generation are the stock
transformers classes of the source family, built per layer from a copy of the config with that
layer's sizes. This file imports only torch and transformers, never evoprune.
"""

import copy
import inspect

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.models.llama import modeling_llama
from transformers.models.mistral import modeling_mistral
from transformers.models.qwen2 import modeling_qwen2
from transformers.models.qwen3 import modeling_qwen3

from .configuration_evoprune import (
    EvopruneLlamaConfig,
    EvopruneMistralConfig,
    EvopruneQwen2Config,
    EvopruneQwen3Config,
)

try:
    from transformers.utils.generic import merge_with_config_defaults
    from transformers.utils.output_capturing import capture_outputs
except ImportError:  # older or newer layouts: plain forward, no hidden-state capture

    def merge_with_config_defaults(fn):
        return fn

    def capture_outputs(fn):
        return fn


# transformers 5.24 renamed the cache argument `past_key_values` to `cache` (the old name is deprecated):
# pass it on under the name the installed version's stock classes take.
CACHE_ARG = "cache" if "cache" in inspect.signature(modeling_llama.LlamaAttention.forward).parameters \
    else "past_key_values"


def layer_config(config, layer_idx):
    """A shallow copy of `config` carrying the sizes of one layer."""
    c = copy.copy(config)
    if config.layer_num_attention_heads is not None:
        c.num_attention_heads = config.layer_num_attention_heads[layer_idx]
        c.num_key_value_heads = config.layer_num_key_value_heads[layer_idx]
    if config.layer_intermediate_sizes is not None:
        c.intermediate_size = config.layer_intermediate_sizes[layer_idx]
    return c


def layer_type(config, layer_idx):
    types = getattr(config, "layer_types", None)
    if types is not None:
        return types[layer_idx]
    return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


class PrunedDecoderLayerMixin:
    """Pre-norm residual layer whose attention and/or MLP block may be absent."""

    family = None  # the transformers modeling module of the source family
    prefix = None  # its class-name prefix, e.g. "Llama"

    def __init__(self, config, layer_idx):
        GradientCheckpointingLayer.__init__(self)
        part = layer_config(config, layer_idx)
        norm = getattr(self.family, f"{self.prefix}RMSNorm")
        self.hidden_size = config.hidden_size
        self.attention_type = layer_type(config, layer_idx)
        self.self_attn = self.input_layernorm = None
        if part.num_attention_heads > 0:
            self.self_attn = getattr(self.family, f"{self.prefix}Attention")(config=part, layer_idx=layer_idx)
            self.self_attn.config = config  # so attn_implementation chosen at load time applies
            self.input_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = self.post_attention_layernorm = None
        if part.intermediate_size > 0:
            self.mlp = getattr(self.family, f"{self.prefix}MLP")(part)
            self.post_attention_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, cache=None, **kwargs):
        if self.self_attn is not None:
            residual = hidden_states
            hidden_states, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{CACHE_ARG: cache if cache is not None else past_key_values},
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = residual + hidden_states
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class PrunedModelMixin:
    """The decoder stack: stock embedding, RoPE, masks and cache around pruned layers."""

    family = prefix = decoder_layer_class = None

    def __init__(self, config):
        getattr(self.family, f"{self.prefix}PreTrainedModel").__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [self.decoder_layer_class(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = getattr(self.family, f"{self.prefix}RMSNorm")(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = getattr(self.family, f"{self.prefix}RotaryEmbedding")(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def position_embeddings(self, hidden_states, position_ids) -> dict:
        """RoPE (cos, sin) per attention type of the stack's layers (one RoPE for all here)."""
        shared = self.rotary_emb(hidden_states, position_ids)
        return {layer.attention_type: shared for layer in self.layers}

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, cache=None, **kwargs):
        past_key_values = cache if cache is not None else past_key_values
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen
            position_ids = position_ids.unsqueeze(0)
        masks = attention_mask
        if not isinstance(masks, dict):
            mask_kwargs = dict(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                               position_ids=position_ids, **{CACHE_ARG: past_key_values})
            types = {layer.attention_type for layer in self.layers}
            masks = {"full_attention": create_causal_mask(**mask_kwargs)}
            if "sliding_attention" in types:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        hidden_states = inputs_embeds
        position_embeddings = self.position_embeddings(hidden_states, position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=masks.get(layer.attention_type),
                position_embeddings=position_embeddings.get(layer.attention_type),
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE_ARG: past_key_values},
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, **{CACHE_ARG: past_key_values if use_cache else None}
        )


class PrunedForCausalLMMixin:
    family = prefix = model_class = None

    def __init__(self, config):
        getattr(self.family, f"{self.prefix}PreTrainedModel").__init__(self, config)
        self.model = self.model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


def _family_classes(family, prefix, config_class):
    """Decoder layer, model and causal-LM classes of one family, named Evoprune<Prefix>..."""
    stock_layer = getattr(family, f"{prefix}DecoderLayer")
    layer = type(f"Evoprune{prefix}DecoderLayer", (PrunedDecoderLayerMixin, stock_layer),
                 {"family": family, "prefix": prefix, "__module__": __name__})
    shared = {"family": family, "prefix": prefix, "config_class": config_class, "__module__": __name__,
              "_no_split_modules": [layer.__name__]}
    model = type(f"Evoprune{prefix}Model", (PrunedModelMixin, getattr(family, f"{prefix}Model")),
                 {**shared, "decoder_layer_class": layer})
    causal_lm = type(f"Evoprune{prefix}ForCausalLM", (PrunedForCausalLMMixin, getattr(family, f"{prefix}ForCausalLM")),
                     {**shared, "model_class": model})
    return layer, model, causal_lm


EvopruneLlamaDecoderLayer, EvopruneLlamaModel, EvopruneLlamaForCausalLM = _family_classes(
    modeling_llama, "Llama", EvopruneLlamaConfig)
EvopruneMistralDecoderLayer, EvopruneMistralModel, EvopruneMistralForCausalLM = _family_classes(
    modeling_mistral, "Mistral", EvopruneMistralConfig)
EvopruneQwen2DecoderLayer, EvopruneQwen2Model, EvopruneQwen2ForCausalLM = _family_classes(
    modeling_qwen2, "Qwen2", EvopruneQwen2Config)
EvopruneQwen3DecoderLayer, EvopruneQwen3Model, EvopruneQwen3ForCausalLM = _family_classes(
    modeling_qwen3, "Qwen3", EvopruneQwen3Config)

