"""Solve one module's ladder of levels: which units each level keeps, and the compensated weights.

`obs` removes units greedily with the second-order update of the remaining columns (method of
the database); `activation` keeps the units with the largest output energy E‖W_u x_u‖² and
leaves the weights as they are (the cheap ranking, for comparison).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..arch.shape import LayerShape
from .levels import AttentionShape
from .solver import inverse_hessian, neuron_chain, obs_cost, obs_remove


@dataclass
class SolvedLevel:
    kept: list[int]  # attention: kept query heads; MLP: kept neurons
    kv_heads: list[int]  # attention only
    weight: torch.Tensor | None  # output projection restricted to kept columns (None: slice the dense one)
    error: float  # increase of the layer-output reconstruction error caused by the removal
    shape: AttentionShape | None = None


def head_columns(heads: list[int], head_dim: int) -> list[int]:
    """The input columns of an output projection that heads `heads` write (head_dim each)."""
    return [h * head_dim + j for h in heads for j in range(head_dim)]


def _removal_error(W: torch.Tensor, H: torch.Tensor, removed_cols: list[int]) -> float:
    """Error of zeroing columns without compensation: tr(W_R H_RR W_Rᵀ)."""
    if not removed_cols:
        return 0.0
    idx = torch.tensor(removed_cols)
    w = W[:, idx].double()
    return float(torch.einsum("oi,ij,oj->", w, H[idx][:, idx].double(), w))


def solve_attention_levels(W: torch.Tensor, H: torch.Tensor, layer: LayerShape, head_dim: int,
                           ladder: list[list[AttentionShape]], method: str) -> list[SolvedLevel]:
    """One SolvedLevel per ladder entry: level 0 removes the block, the last keeps it whole.

    For levels with several GQA shapes of equal cost, the shape with the smaller error wins.
    """
    out = [SolvedLevel([], [], None, _removal_error(W, H, list(range(W.shape[1]))))]
    for shapes in ladder[1:-1]:
        solved = [_attention_state(W, H, layer, head_dim, a, method) for a in shapes]
        out.append(min(solved, key=lambda s: s.error))
    full = ladder[-1][0]
    out.append(SolvedLevel(list(range(layer.num_heads)), list(range(layer.num_kv_heads)), None, 0.0, full))
    return out


def _attention_state(W, H, layer: LayerShape, head_dim: int, target: AttentionShape, method: str) -> SolvedLevel:
    rep = layer.heads_per_group
    groups = {g: list(range(g * rep, (g + 1) * rep)) for g in range(layer.num_kv_heads)}
    if method == "activation":
        Wf, Hf = W.double(), H.double()
        energy = {h: float(torch.einsum("oi,ij,oj->", Wf[:, c], Hf[c][:, c], Wf[:, c]))
                  for h in range(layer.num_heads) for c in [torch.tensor(head_columns([h], head_dim))]}
        best = {g: sorted(hs, key=lambda h: -energy[h])[:target.heads_per_group] for g, hs in groups.items()}
        keep_groups = sorted(groups, key=lambda g: -sum(energy[h] for h in best[g]))[:target.groups]
        kept = sorted(h for g in keep_groups for h in best[g])
        removed = sorted(set(range(layer.num_heads)) - set(kept))
        return SolvedLevel(kept, sorted(keep_groups), None, _removal_error(W, H, head_columns(removed, head_dim)), target)

    Wd, Hinv = W.double().clone(), inverse_hessian(H.double())
    total = 0.0
    need_groups = layer.num_kv_heads - target.groups
    need_rows = rep - target.heads_per_group
    while need_groups or need_rows:
        moves = []
        if need_groups:
            for g in sorted(groups):
                cols = head_columns(groups[g], head_dim)
                moves.append((obs_cost(Wd, Hinv, cols), "group", g, cols))
        if need_rows:
            row = [min(groups[g], key=lambda h: (obs_cost(Wd, Hinv, head_columns([h], head_dim)), h)) for g in sorted(groups)]
            cols = head_columns(row, head_dim)
            moves.append((obs_cost(Wd, Hinv, cols), "row", row, cols))
        cost, kind, what, cols = min(moves, key=lambda m: m[0])
        _, Wd, Hinv = obs_remove(Wd, Hinv, cols)
        total += float(cost)
        if kind == "group":
            del groups[what]
            need_groups -= 1
        else:
            for h in what:
                groups[h // rep].remove(h)
            need_rows -= 1
    kept = sorted(h for hs in groups.values() for h in hs)
    weight = Wd[:, torch.tensor(head_columns(kept, head_dim))].to(W.dtype)
    return SolvedLevel(kept, sorted(groups), weight, total, target)


def solve_mlp_levels(W: torch.Tensor, H: torch.Tensor, widths: list[int], method: str, step: int = 0
                     ) -> list[SolvedLevel]:
    """One SolvedLevel per kept width in `widths` (ascending, 0 first, full last)."""
    m = W.shape[1]
    out = [SolvedLevel([], [], None, _removal_error(W, H, list(range(m))))]
    inner = widths[1:-1]
    if method == "activation":
        energy = W.double().pow(2).sum(0) * torch.diagonal(H).double()
        order = torch.argsort(energy, descending=True).tolist()
        for n in inner:
            kept = sorted(order[:n])
            out.append(SolvedLevel(kept, [], None, _removal_error(W, H, sorted(order[n:]))))
    else:
        step = step or max(1, m // 96)  # 16 for 1536 neurons: same cost as single steps, 10x faster
        states = neuron_chain(W, H, record=set(inner), step=step)
        for n in inner:
            st = states[n]
            out.append(SolvedLevel(list(st.kept), [], st.weight.to(W.dtype), float(st.cost)))
    out.append(SolvedLevel(list(range(m)), [], None, 0.0))
    return out
