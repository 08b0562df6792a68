"""Llama-like adapters whose decoder-layer parameters are sliced by a per-family table.

Each parameter of a layer names how its rows and columns are indexed and which block owns it (a
removed block takes all its parameters along). Besides the kinds of the Llama family ("q", "kv", "n",
"h"), a table may name fused projections: "qkv" (rows [q heads | k heads | v heads], Phi-3's
`qkv_proj`) and "gate_up" (rows [gate | up], Phi-3's `gate_up_proj`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import PreTrainedModel

from .llama import LlamaFamilyAdapter, family_name
from .shape import LayerShape, ModelShape
from .slicing import head_rows, take
from .spec import SubnetSpec


@dataclass(frozen=True)
class Slicing:
    rows: str | None  # index kind of the rows (None: all)
    cols: str | None  # index kind of the columns (None: all)
    block: str  # "attention" or "mlp"


class LayerTableAdapter(LlamaFamilyAdapter):
    """A Llama-family adapter whose layers are sliced by `layer_slices` and measured by `layer_shape`."""

    layer_slices: ClassVar[dict[str, Slicing]]

    def layer_shape(self, layer, head_dim: int) -> LayerShape:
        """Query heads, KV heads and neurons of one decoder layer (0 for a missing block)."""
        attn, mlp = layer.self_attn, layer.mlp
        heads = attn.o_proj.in_features // head_dim if attn is not None else 0
        kv = self.kv_width(attn, heads * head_dim) // head_dim if attn is not None else 0
        return LayerShape(heads, kv, mlp.down_proj.in_features if mlp is not None else 0)

    def kv_width(self, attn, q_width: int) -> int:
        return attn.k_proj.out_features

    def shape_flags(self, attns: list, mlps: list) -> dict:
        """The ModelShape fields beyond the sizes (biases, q/k norms)."""
        return {}

    def shape(self, model: PreTrainedModel) -> ModelShape:
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        layers = self.layers(model)
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        return ModelShape(
            family=family_name(config),
            vocab_size=emb.shape[0],
            hidden_size=emb.shape[1],
            head_dim=head_dim,
            layers=tuple(self.layer_shape(layer, head_dim) for layer in layers),
            tied_embeddings=emb.data_ptr() == head.data_ptr() or bool(config.tie_word_embeddings),
            **self.shape_flags([x.self_attn for x in layers if x.self_attn is not None],
                               [x.mlp for x in layers if x.mlp is not None]),
        )

    def _layer_state(self, src: dict[str, torch.Tensor], spec: SubnetSpec, old_idx: int, hidden: torch.Tensor | None,
                     replace: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Source layer `old_idx`'s tensors, sliced to what `spec` keeps (names relative to the layer)."""
        ls, source = spec.layers[old_idx], spec.source.layers[old_idx]
        index = _indices(ls.heads, ls.kv_heads, ls.neurons, source, spec.source.head_dim)
        index.update(h=hidden)
        kept = {"attention": ls.has_attention, "mlp": ls.has_mlp}
        prefix = f"model.layers.{old_idx}."
        out = {}
        for key in [k for k in src if k.startswith(prefix)]:
            name = key[len(prefix):]
            if name not in self.layer_slices:
                raise RuntimeError(f"don't know how to slice parameter {key}")
            how = self.layer_slices[name]
            if not kept[how.block]:
                continue
            rows, cols = index.get(how.rows), index.get(how.cols)
            if key in replace:
                expected = (len(rows) if rows is not None else src[key].shape[0],
                            *([len(cols)] if cols is not None else src[key].shape[1:]))
                if tuple(replace[key].shape) != expected:
                    raise ValueError(f"replacement for {key} has shape {tuple(replace[key].shape)}, "
                                     f"the sliced tensor {expected}")
                out[name] = replace[key].to(dtype=src[key].dtype, device=src[key].device)
            else:
                out[name] = take(src[key], rows, cols)
        return out


def _indices(heads: list[int], kv_heads: list[int], neurons: list[int], source: LayerShape,
             head_dim: int) -> dict[str, torch.Tensor]:
    q, kv = head_rows(heads, head_dim), head_rows(kv_heads, head_dim)
    q_width, kv_width = source.num_heads * head_dim, source.num_kv_heads * head_dim
    n = torch.tensor(neurons, dtype=torch.long)
    return {"q": q, "kv": kv, "n": n,
            "qkv": torch.cat([q, q_width + kv, q_width + kv_width + kv]),
            "gate_up": torch.cat([n, source.intermediate_size + n])}
