"""The prunable units of a model, enumerated from its shape.

Methods choose among these; a choice becomes a SubnetSpec. Under grouped-query attention the
attention units are whole KV groups (one K head, one V head and the query heads that share
them) or query-head slots, removed in every kept group alike so the layer stays valid GQA.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import params
from .shape import LayerShape, ModelShape


@dataclass(frozen=True)
class Unit:
    kind: str  # kv_group | query_slot | neuron | attention_block | mlp_block | layer | hidden_channel
    layer: int | None  # None for hidden channels (shared by every layer)
    index: int  # group / slot / neuron / channel index inside the layer (0 for blocks and layers)
    params: int  # parameters removed with this unit alone, from the dense layer


def layer_units(shape: ModelShape, i: int) -> list[Unit]:
    layer = shape.layers[i]
    units: list[Unit] = []
    if layer.num_kv_heads:
        attn = params.attention_params(shape, layer)
        rep = layer.heads_per_group
        smaller = LayerShape(layer.num_heads - rep, layer.num_kv_heads - 1, layer.intermediate_size)
        per_group = attn - params.attention_params(shape, smaller)
        units += [Unit("kv_group", i, g, per_group) for g in range(layer.num_kv_heads)]
        if rep > 1:
            fewer = LayerShape(layer.num_heads - layer.num_kv_heads, layer.num_kv_heads, layer.intermediate_size)
            per_slot = attn - params.attention_params(shape, fewer)
            units += [Unit("query_slot", i, s, per_slot) for s in range(rep)]
        units.append(Unit("attention_block", i, 0, attn))
    if layer.intermediate_size:
        mlp = params.mlp_params(shape, layer)
        n_in = 3 if shape.gated_mlp else 2
        per_neuron = n_in * shape.hidden_size + (n_in - 1 if shape.mlp_bias else 0)
        units += [Unit("neuron", i, j, per_neuron) for j in range(layer.intermediate_size)]
        units.append(Unit("mlp_block", i, 0, mlp))
    units.append(Unit("layer", i, 0, params.layer_params(shape, layer)))
    return units


def prunable_units(shape: ModelShape, hidden: bool = True) -> list[Unit]:
    """Every prunable unit of `shape`, layer by layer, then the hidden channels."""
    units = [u for i in range(shape.num_layers) for u in layer_units(shape, i)]
    if hidden:
        d = shape.hidden_size
        per_channel = params.total_params(shape) - params.total_params(
            ModelShape(**{**shape.to_dict(), "layers": shape.layers, "hidden_size": d - 1}))
        units += [Unit("hidden_channel", None, c, per_channel) for c in range(d)]
    return units


def unit_counts(shape: ModelShape) -> dict[str, int]:
    counts: dict[str, int] = {}
    for u in prunable_units(shape):
        counts[u.kind] = counts.get(u.kind, 0) + 1
    return counts
