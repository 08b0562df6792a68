"""Adapter for the Llama family: Llama 2/3.x, Mistral, Qwen2 (q/k/v bias), Qwen3 (q/k norm), SmolLM2.

All share the pre-norm decoder layer `self_attn.{q,k,v,o}_proj` + `mlp.{gate,up,down}_proj` with
RMSNorms, grouped-query attention and RoPE; they differ only in biases, q/k norms and sliding
windows, which the shape records and slicing handles generically.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ..errors import UserError
from .adapter import ModelAdapter, register_adapter
from .hf import configuration_evoprune as pruned_cfg
from .hf import modeling_evoprune as pruned_lm
from .shape import LayerShape, ModelShape
from .slicing import head_rows, instantiate, take
from .spec import SubnetSpec

try:  # transformers 5 validates configs through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassClassValidationError

    CONFIG_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, StrictDataclassClassValidationError)
except ImportError:
    CONFIG_ERRORS = (ValueError, TypeError)


@dataclass(frozen=True)
class Family:
    stock_config: type[PretrainedConfig]
    stock_lm: type[PreTrainedModel]
    pruned_config: type[PretrainedConfig]
    pruned_lm: type[PreTrainedModel]


FAMILIES = {
    "llama": Family(LlamaConfig, LlamaForCausalLM, pruned_cfg.EvopruneLlamaConfig, pruned_lm.EvopruneLlamaForCausalLM),
    "mistral": Family(MistralConfig, MistralForCausalLM, pruned_cfg.EvopruneMistralConfig,
                      pruned_lm.EvopruneMistralForCausalLM),
    "qwen2": Family(Qwen2Config, Qwen2ForCausalLM, pruned_cfg.EvopruneQwen2Config, pruned_lm.EvopruneQwen2ForCausalLM),
    "qwen3": Family(Qwen3Config, Qwen3ForCausalLM, pruned_cfg.EvopruneQwen3Config, pruned_lm.EvopruneQwen3ForCausalLM),
}

# How each parameter of a decoder layer is sliced: (row index kind, column index kind).
# "q": kept query-head rows, "kv": kept KV-head rows, "n": kept neurons, "h": kept hidden channels.
LAYER_SLICES = {
    "self_attn.q_proj.weight": ("q", "h"), "self_attn.q_proj.bias": ("q", None),
    "self_attn.k_proj.weight": ("kv", "h"), "self_attn.k_proj.bias": ("kv", None),
    "self_attn.v_proj.weight": ("kv", "h"), "self_attn.v_proj.bias": ("kv", None),
    "self_attn.o_proj.weight": ("h", "q"), "self_attn.o_proj.bias": ("h", None),
    "self_attn.q_norm.weight": (None, None), "self_attn.k_norm.weight": (None, None),
    "input_layernorm.weight": ("h", None),
    "mlp.gate_proj.weight": ("n", "h"), "mlp.gate_proj.bias": ("n", None),
    "mlp.up_proj.weight": ("n", "h"), "mlp.up_proj.bias": ("n", None),
    "mlp.down_proj.weight": ("h", "n"), "mlp.down_proj.bias": ("h", None),
    "post_attention_layernorm.weight": ("h", None),
}


def family_name(config: PretrainedConfig) -> str:
    return config.model_type.removeprefix("evoprune_")


def source_layer_type(config: PretrainedConfig, layer_idx: int) -> str:
    return pruned_lm.layer_type(config, layer_idx)


class LlamaFamilyAdapter(ModelAdapter):
    name = "llama"
    model_types = tuple(FAMILIES) + tuple(f"evoprune_{f}" for f in FAMILIES)
    families = FAMILIES  # source family name -> stock and pruned classes
    layer_slices = LAYER_SLICES
    attention_parts = ("self_attn.", "input_layernorm.")  # layer parameters that go with the attention block

    def layers(self, model):
        return list(model.model.layers)

    def attention(self, layer):
        return layer.self_attn

    def mlp(self, layer):
        return layer.mlp

    def attention_output(self, layer):
        return layer.self_attn.o_proj

    def mlp_output(self, layer):
        return layer.mlp.down_proj

    def parameter_name(self, layer: int, part: str) -> str:
        return {"attention_output": f"model.layers.{layer}.self_attn.o_proj.weight",
                "mlp_output": f"model.layers.{layer}.mlp.down_proj.weight"}[part]

    def shape(self, model: PreTrainedModel) -> ModelShape:
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        layer_shapes, attns, mlps = [], [], []
        for layer in self.layers(model):
            attn, mlp = layer.self_attn, layer.mlp
            heads = attn.q_proj.out_features // head_dim if attn is not None else 0
            kv = attn.k_proj.out_features // head_dim if attn is not None else 0
            layer_shapes.append(LayerShape(heads, kv, mlp.gate_proj.out_features if mlp is not None else 0))
            attns += [attn] if attn is not None else []
            mlps += [mlp] if mlp is not None else []
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        return ModelShape(
            family=family_name(config),
            vocab_size=emb.shape[0],
            hidden_size=emb.shape[1],
            head_dim=head_dim,
            layers=tuple(layer_shapes),
            tied_embeddings=emb.data_ptr() == head.data_ptr() or bool(config.tie_word_embeddings),
            qkv_bias=any(a.q_proj.bias is not None for a in attns),
            o_bias=any(a.o_proj.bias is not None for a in attns),
            mlp_bias=any(m.gate_proj.bias is not None for m in mlps),
            qk_norm=any(hasattr(a, "q_norm") for a in attns),
        )

    def final_norm(self, model: PreTrainedModel):
        return model.model.norm

    def position_embeddings(self, model: PreTrainedModel, hidden: torch.Tensor, position_ids: torch.Tensor):
        return model.model.rotary_emb(hidden, position_ids)

    def slice(self, model: PreTrainedModel, spec: SubnetSpec,
              replace: dict[str, torch.Tensor] | None = None, share_embeddings: bool = False) -> PreTrainedModel:
        spec.validate(self.shape(model))
        hidden = None if spec.hidden is None else torch.tensor(spec.hidden)
        src = model.state_dict()
        outer = ["model.embed_tokens.weight", "model.norm.weight"]
        outer += [] if spec.source.tied_embeddings else ["lm_head.weight"]
        if share_embeddings and hidden is None:  # the dense tensors themselves, read-only
            out = {key: src[key] for key in outer}
        else:
            out = {key: take(src[key], hidden if key == "model.norm.weight" else None,
                             None if key == "model.norm.weight" else hidden) for key in outer}
        for new_idx, old_idx in enumerate(spec.kept_layers()):
            layer = self._layer_state(src, spec, old_idx, hidden, replace or {})
            out.update({f"model.layers.{new_idx}.{name}": t for name, t in layer.items()})
        config, lm_class = self.pruned_config(model.config, spec)
        pruned = instantiate(lm_class, config, out)
        return pruned.to(dtype=next(model.parameters()).dtype)

    def sliced_layers(self, model: PreTrainedModel, spec: SubnetSpec, replace: dict[str, torch.Tensor] | None = None,
                      dtype: torch.dtype | None = None) -> Iterator[nn.Module]:
        if spec.hidden is not None:
            raise ValueError("layer-by-layer slicing keeps the hidden size; slice the whole model to prune channels")
        spec.validate(self.shape(model))
        src = model.state_dict()
        config = self.heterogeneous_config(model.config, spec)
        config._attn_implementation = model.config._attn_implementation  # the captured masks are made for it
        layer_class = self.families[spec.source.family].pruned_lm.model_class.decoder_layer_class
        for new_idx, old_idx in enumerate(spec.kept_layers()):
            state = self._layer_state(src, spec, old_idx, None, replace or {})
            with torch.device("meta"):
                layer = layer_class(config, new_idx)
            layer.load_state_dict(state, strict=True, assign=True)
            yield layer.to(dtype=dtype or next(model.parameters()).dtype).eval()

    def _layer_state(self, src: dict[str, torch.Tensor], spec: SubnetSpec, old_idx: int, hidden: torch.Tensor | None,
                     replace: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Source layer `old_idx`'s tensors, sliced to what `spec` keeps (names relative to the layer)."""
        ls = spec.layers[old_idx]
        hd = spec.source.head_dim
        index = {"q": head_rows(ls.heads, hd), "kv": head_rows(ls.kv_heads, hd),
                 "n": torch.tensor(ls.neurons, dtype=torch.long), "h": hidden, None: None}
        prefix = f"model.layers.{old_idx}."
        out = {}
        for key in [k for k in src if k.startswith(prefix)]:
            name = key[len(prefix):]
            if name not in self.layer_slices:
                raise RuntimeError(f"don't know how to slice parameter {key}")
            in_attention = name.startswith(self.attention_parts)
            if (in_attention and not ls.has_attention) or (not in_attention and not ls.has_mlp):
                continue
            rows, cols = self.layer_slices[name]
            if key in replace:
                expected = (len(index[rows]) if index[rows] is not None else src[key].shape[0],
                            *([len(index[cols])] if index[cols] is not None else src[key].shape[1:]))
                if tuple(replace[key].shape) != expected:
                    raise ValueError(f"replacement for {key} has shape {tuple(replace[key].shape)}, "
                                     f"the sliced tensor {expected}")
                out[name] = replace[key].to(dtype=src[key].dtype, device=src[key].device)
            else:
                out[name] = take(src[key], index[rows], index[cols])
        return out

    def pruned_config(self, config: PretrainedConfig, spec: SubnetSpec) -> tuple[PretrainedConfig, type]:
        """The config (and model class) of the sliced model: stock when uniform, evoprune otherwise."""
        family = self.families[spec.source.family]
        shape = spec.result_shape()
        base = self._base_config(config)
        sizes = self._sizes(shape)
        if spec.is_uniform():
            stock = {**base, **sizes, "num_key_value_heads": shape.layers[0].num_kv_heads}
            if "layer_types" in family.stock_config.__dataclass_fields__:
                stock["layer_types"] = self._layer_types(config, spec)
            try:
                return family.stock_config(**stock), family.stock_lm
            except CONFIG_ERRORS:
                pass  # e.g. hidden size not a multiple of the head count: needs the evoprune config
        return self.heterogeneous_config(config, spec), family.pruned_lm

    @staticmethod
    def _layer_types(config: PretrainedConfig, spec: SubnetSpec) -> list[str]:
        return [source_layer_type(config, i) if spec.layers[i].has_attention else pruned_cfg.NO_ATTENTION
                for i in spec.kept_layers()]

    @staticmethod
    def _base_config(config: PretrainedConfig) -> dict:
        return {k: v for k, v in config.to_dict().items()
                if k not in ("architectures", "auto_map", "model_type", "quantization_config", "transformers_version",
                             "_name_or_path", "layer_num_attention_heads", "layer_num_key_value_heads",
                             "layer_intermediate_sizes", "layer_types", "max_window_layers")}

    @staticmethod
    def _sizes(shape) -> dict:
        first_attn = next((s for s in shape.layers if s.num_kv_heads), None)
        if first_attn is None:
            raise UserError("the sub-network keeps no attention block in any layer; keep at least one")
        return dict(
            hidden_size=shape.hidden_size,
            num_hidden_layers=len(shape.layers),
            head_dim=shape.head_dim,
            num_attention_heads=max(s.num_heads for s in shape.layers),
            num_key_value_heads=first_attn.num_kv_heads,
            intermediate_size=max(s.intermediate_size for s in shape.layers),
        )

    def heterogeneous_config(self, config: PretrainedConfig, spec: SubnetSpec) -> PretrainedConfig:
        """The evoprune config of the sliced model, with per-layer sizes (valid for uniform specs too)."""
        family = self.families[spec.source.family]
        shape = spec.result_shape()
        sizes = self._sizes(shape)
        if sizes["num_attention_heads"] % sizes["num_key_value_heads"]:
            sizes["num_key_value_heads"] = 1
        return family.pruned_config(**{
            **self._base_config(config), **sizes,
            "layer_num_attention_heads": [s.num_heads for s in shape.layers],
            "layer_num_key_value_heads": [s.num_kv_heads for s in shape.layers],
            "layer_intermediate_sizes": [s.intermediate_size for s in shape.layers],
            "layer_types": self._layer_types(config, spec),
        })


register_adapter(LlamaFamilyAdapter())
