"""Compression-level ladders generated from the model's shape (not written by hand per model).

A module (one layer's attention or MLP) gets up to `num_levels` levels evenly spaced in cost
(parameters or FLOPs per token) from removed (level 0) to full (the last level). MLP levels are
neuron counts, optionally at hardware-friendly multiples. Attention levels are GQA-legal shapes:
g kept KV groups with s query heads each; shapes of equal cost (e.g. 1 group × 3 heads and
3 groups × 1 head with MHA-sized projections) share a level and the database keeps the one
that the layer's own second-order error prefers.

The `nemotron-nas` space (`search.space`) keeps only what Nemotron-NAS engines serve: attention
removed or whole (every query head), MLP widths at multiples of 256 (up to the full width).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..arch import params
from ..arch.shape import LayerShape, ModelShape
from ..errors import UserError
from ..arch import nemotron_format

METRICS = ("params", "flops")
ATTENTION_UNITS = ("groups", "query_heads")
SPACES = nemotron_format.SPACES


@dataclass(frozen=True)
class AttentionShape:
    groups: int  # kept KV groups
    heads_per_group: int  # kept query heads in each kept group

    @property
    def num_heads(self) -> int:
        return self.groups * self.heads_per_group


def attention_cost(shape: ModelShape, layer: LayerShape, a: AttentionShape, metric: str, context: int = 1024) -> int:
    kept = LayerShape(a.num_heads, a.groups, 0)
    if metric == "params":
        return params.attention_params(shape, kept)
    single = ModelShape(**{**shape.to_dict(), "layers": (kept,), "vocab_size": 0})
    return params.flops_per_token(single, context)


def mlp_cost(shape: ModelShape, neurons: int, metric: str) -> int:
    kept = LayerShape(0, 0, neurons)
    if metric == "params":
        return params.mlp_params(shape, kept)
    single = ModelShape(**{**shape.to_dict(), "layers": (kept,), "vocab_size": 0})
    return params.flops_per_token(single)


def _even_targets(full: float, num_levels: int) -> list[float]:
    return [full * k / (num_levels - 1) for k in range(num_levels)]


def attention_ladder(shape: ModelShape, layer: LayerShape, num_levels: int, metric: str = "params",
                     units: str = "groups", space: str = "full") -> list[list[AttentionShape]]:
    """Per level, the GQA shapes of that level's cost (level 0 = removed = []).

    `units="query_heads"` keeps every KV group in every level but the removed one and prunes query
    heads only (equally in each group), as DarwinLM's code does. `space="nemotron-nas"` has two
    levels only: removed and whole."""
    check_levels(num_levels, metric)
    if layer.num_kv_heads == 0:
        return [[]]
    if space == nemotron_format.SPACE:
        return [[], [AttentionShape(layer.num_kv_heads, layer.heads_per_group)]]
    by_cost: dict[int, list[AttentionShape]] = {}
    for g in range(1 if units == "groups" else layer.num_kv_heads, layer.num_kv_heads + 1):
        for s in range(1, layer.heads_per_group + 1):
            a = AttentionShape(g, s)
            by_cost.setdefault(attention_cost(shape, layer, a, metric), []).append(a)
    costs = sorted(by_cost)
    full = costs[-1]
    chosen = [0]
    for t in _even_targets(full, num_levels)[1:]:
        nearest = min(costs, key=lambda c: (abs(c - t), c))
        if nearest not in chosen:
            chosen.append(nearest)
    chosen[-1:] = [full] if chosen[-1] != full else chosen[-1:]
    return [[]] + [by_cost[c] for c in sorted(set(chosen) - {0})]


def mlp_ladder(layer: LayerShape, num_levels: int, multiple: int = 1, space: str = "full") -> list[int]:
    """Kept neuron counts per level: evenly spaced from 0 to all, snapped to `multiple`.

    In the `nemotron-nas` space, `multiple` becomes a multiple of 256 (lcm); an MLP narrower than
    that has two levels, removed and whole."""
    check_levels(num_levels, "params")
    m = layer.intermediate_size
    if space == nemotron_format.SPACE:
        multiple = math.lcm(max(1, multiple), nemotron_format.MLP_MULTIPLE)
        if multiple >= m:
            return [0, m]
    if multiple < 1 or multiple > max(m, 1):
        raise UserError(f"--multiple {multiple} must be between 1 and the MLP width {m}")
    counts = [0]
    for t in _even_targets(m, num_levels)[1:-1]:
        n = int(round(t / multiple)) * multiple
        if 0 < n < m and n not in counts:
            counts.append(n)
    return counts + [m]


def check_levels(num_levels: int, metric: str) -> None:
    if num_levels < 2:
        raise UserError(f"need at least 2 levels (removed and full), got {num_levels}")
    if metric not in METRICS:
        raise UserError(f"level spacing must be one of {', '.join(METRICS)}, got {metric!r}")


def check_space(space: str) -> None:
    if space not in SPACES:
        raise UserError(f"search space must be one of {', '.join(SPACES)}, got {space!r}")
