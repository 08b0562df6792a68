"""Configuration of a structurally pruned Llama-family model (shipped inside exported checkpoints).

Each class is the stock config of its family plus three per-layer lists. A layer with 0
attention heads has no attention block (its `layer_types` entry is "mlp", so the KV cache
keeps a dummy layer for it); a layer with intermediate size 0 has no MLP block. The global
`num_attention_heads` / `num_key_value_heads` / `intermediate_size` hold the largest per-layer
values. This file imports only transformers.
"""

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
from transformers.configuration_utils import ALLOWED_ATTN_LAYER_TYPES

NO_ATTENTION = "mlp"


def _validate_per_layer_shapes(config) -> None:
    n = config.num_hidden_layers
    heads = config.layer_num_attention_heads or [config.num_attention_heads] * n
    kv = config.layer_num_key_value_heads or [config.num_key_value_heads] * n
    mlp = config.layer_intermediate_sizes or [config.intermediate_size] * n
    for name, values in (("layer_num_attention_heads", heads), ("layer_num_key_value_heads", kv),
                         ("layer_intermediate_sizes", mlp)):
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} entries, expected num_hidden_layers = {n}")
        if any(v < 0 for v in values):
            raise ValueError(f"{name} must be non-negative, got {values}")
    for i, (h, g) in enumerate(zip(heads, kv)):
        if (h == 0) != (g == 0) or (g and h % g):
            raise ValueError(f"layer {i}: {h} query heads cannot be split evenly over {g} KV heads")
    types = config.layer_types
    if types is None and 0 in heads:
        raise ValueError("layer_types is required when a layer has no attention (its entry must be 'mlp')")
    if types is not None:
        if len(types) != n:
            raise ValueError(f"layer_types has {len(types)} entries, expected {n}")
        for i, (t, h) in enumerate(zip(types, heads)):
            if (t == NO_ATTENTION) != (h == 0):
                raise ValueError(f"layer {i}: layer type {t!r} does not match {h} attention heads")
            if t != NO_ATTENTION and t not in ALLOWED_ATTN_LAYER_TYPES:
                raise ValueError(f"layer {i}: unknown layer type {t!r}")


class PerLayerShapes:
    """Fields and checks that every pruned family config adds to its stock config."""

    layer_num_attention_heads: list[int] | None = None
    layer_num_key_value_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None
    layer_types: list[str] | None = None

    def validate_architecture(self):
        _validate_per_layer_shapes(self)

    def validate_layer_type(self):
        pass  # covered by validate_architecture, which also accepts "mlp" layers


def _pruned_config(stock, family):
    namespace = {"model_type": f"evoprune_{family.lower()}", "__module__": __name__,
                 "__annotations__": dict(PerLayerShapes.__annotations__)}
    return strict(type(f"Evoprune{family}Config", (PerLayerShapes, stock), namespace))


EvopruneLlamaConfig = _pruned_config(LlamaConfig, "Llama")
EvopruneMistralConfig = _pruned_config(MistralConfig, "Mistral")
EvopruneQwen2Config = _pruned_config(Qwen2Config, "Qwen2")
EvopruneQwen3Config = _pruned_config(Qwen3Config, "Qwen3")
