"""Modeling code of a structurally pruned Phi-3 / Phi-3.5 model (shipped inside exported checkpoints).

The layers of modeling_evoprune.py around Phi-3's stock attention (fused `qkv_proj`) and MLP (fused
`gate_up_proj`). Phi-3's attention splits `qkv_proj`'s output with the head count of the config it
reads at run time, so each layer's attention reads a view of the model config carrying that layer's
head counts. This file imports only torch, transformers and its sibling modeling_evoprune.py.
"""

from transformers.models.phi3 import modeling_phi3

from .configuration_evoprune_phi3 import EvoprunePhi3Config
from .modeling_evoprune import (
    PrunedDecoderLayerMixin,
    PrunedForCausalLMMixin,
    PrunedModelMixin,
    layer_config,
)


class LayerConfigView:
    """The model config as one layer sees it: that layer's head counts, everything else (the attention
    implementation chosen at load time, the sliding window ...) read live from the model config."""

    def __init__(self, config, layer_idx):
        part = layer_config(config, layer_idx)
        self.__dict__.update(_config=config, num_attention_heads=part.num_attention_heads,
                             num_key_value_heads=part.num_key_value_heads)

    def __getattr__(self, name):
        config = self.__dict__.get("_config")
        if config is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(config, name)


class EvoprunePhi3DecoderLayer(PrunedDecoderLayerMixin, modeling_phi3.Phi3DecoderLayer):
    family, prefix = modeling_phi3, "Phi3"

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        if self.self_attn is not None:
            self.self_attn.config = LayerConfigView(config, layer_idx)


class EvoprunePhi3Model(PrunedModelMixin, modeling_phi3.Phi3Model):
    family, prefix, config_class = modeling_phi3, "Phi3", EvoprunePhi3Config
    decoder_layer_class = EvoprunePhi3DecoderLayer
    _no_split_modules = ["EvoprunePhi3DecoderLayer"]


class EvoprunePhi3ForCausalLM(PrunedForCausalLMMixin, modeling_phi3.Phi3ForCausalLM):
    family, prefix, config_class = modeling_phi3, "Phi3", EvoprunePhi3Config
    model_class = EvoprunePhi3Model
    _no_split_modules = ["EvoprunePhi3DecoderLayer"]
