"""Importance sorting (whittle): reorder a model so that the first k units of every dimension are the best k.

Orders come from calibration statistics (`obs.calibration`): KV groups by the summed energy of
their query heads, query-head slots within a group by their energy summed over groups (the same
slot order in every group keeps GQA's head-to-group mapping), MLP neurons by their output
energy, hidden channels by their mean square at the layer inputs. The permutation changes no
function: attention, the MLP and RMSNorm are equivariant to these reorderings (tested: logits
unchanged). Layers are not reordered (they are sequential); `layer_rank` says which L layers a
sub-network of L layers keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.shape import ModelShape
from ..arch.slicing import head_rows
from ..errors import UserError
from ..obs.calibration import CalibrationStats

SORTABLE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")  # separate q/k/v and gate/up


def check_sortable(shape: ModelShape) -> None:
    """Refuse, in one line, a family whose layers `permute_model` does not know (fused projections, post-norms)."""
    if shape.family not in SORTABLE_FAMILIES:
        raise UserError(f"importance-sorted weights (--weights importance) support {', '.join(SORTABLE_FAMILIES)} "
                        f"models, not {shape.family}; use --weights database")


@dataclass
class Importance:
    kv_order: list[list[int]]  # per layer: KV groups, most important first
    slot_order: list[list[int]]  # per layer: query-head slots within a group, most important first
    neuron_order: list[list[int]]  # per layer: MLP neurons, most important first
    hidden_order: list[int]  # hidden channels, most important first
    layer_rank: list[int]  # layer indices, most important (highest block influence) first

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("kv_order", "slot_order", "neuron_order", "hidden_order", "layer_rank")}


def _descending(scores: torch.Tensor) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def importance_from_stats(stats: CalibrationStats, adapter: ModelAdapter, model: PreTrainedModel) -> Importance:
    shape = adapter.shape(model)
    heads = stats.head_energy(adapter, model)
    neurons = stats.neuron_energy(adapter, model)
    kv_order, slot_order = [], []
    for layer, energy in zip(shape.layers, heads):
        per_group = energy.reshape(layer.num_kv_heads, layer.heads_per_group)
        kv_order.append(_descending(per_group.sum(1)))
        slot_order.append(_descending(per_group.sum(0)))
    hidden = sum(st.hidden_moments for st in stats.layers if st.hidden_moments is not None)
    influence = stats.block_influence()
    return Importance(kv_order, slot_order, [_descending(n) for n in neurons], _descending(hidden),
                      sorted(range(len(influence)), key=lambda i: (-influence[i], i)))


def _reorder(param: torch.nn.Parameter | None, index: torch.Tensor, dim: int) -> None:
    if param is not None:
        param.data = param.data.index_select(dim, index.to(param.device)).contiguous()


def _reorder_projection(proj: torch.nn.Linear, out_rows: torch.Tensor | None, in_cols: torch.Tensor | None) -> None:
    """Reorder a projection's output rows (and bias) and input columns."""
    if out_rows is not None:
        _reorder(proj.weight, out_rows, 0)
        _reorder(proj.bias, out_rows, 0)
    if in_cols is not None:
        _reorder(proj.weight, in_cols, 1)


@torch.no_grad()
def permute_model(model: PreTrainedModel, adapter: ModelAdapter, imp: Importance) -> PreTrainedModel:
    """Reorder `model`'s units in place by `imp` (function-preserving); returns the model."""
    shape = adapter.shape(model)
    check_sortable(shape)
    hd = shape.head_dim
    hidden = torch.tensor(imp.hidden_order, dtype=torch.long)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    _reorder(embed, hidden, 1)
    if head.data_ptr() != embed.data_ptr():
        _reorder(head, hidden, 1)
    _reorder(model.model.norm.weight, hidden, 0)
    for i, (layer, ls) in enumerate(zip(adapter.layers(model), shape.layers)):
        s = ls.heads_per_group
        q_heads = [g * s + slot for g in imp.kv_order[i] for slot in imp.slot_order[i]]
        q_rows, kv_rows = head_rows(q_heads, hd), head_rows(imp.kv_order[i], hd)
        attn, mlp = adapter.attention(layer), adapter.mlp(layer)
        for name, norm in layer.named_parameters():
            if name.endswith("layernorm.weight"):  # every norm over the hidden channels (Gemma has four)
                _reorder(norm, hidden, 0)
        neurons = torch.tensor(imp.neuron_order[i], dtype=torch.long)
        for proj, rows in ((attn.q_proj, q_rows), (attn.k_proj, kv_rows), (attn.v_proj, kv_rows),
                           (mlp.gate_proj, neurons), (mlp.up_proj, neurons)):
            _reorder_projection(proj, rows, hidden)
        _reorder_projection(attn.o_proj, hidden, q_rows)
        _reorder_projection(mlp.down_proj, hidden, neurons)
    return model
