"""Uniform structured pruning: the same keep-ratio in every layer, whole KV groups, by activation energy."""

from __future__ import annotations

import torch

from ..arch import params
from ..arch.shape import ModelShape
from ..arch.spec import LayerSpec, SubnetSpec
from ..arch.target import Target, unreachable


def top_indices(scores: torch.Tensor, k: int) -> list[int]:
    """Sorted indices of the k largest scores."""
    return sorted(torch.topk(scores, k).indices.tolist()) if k > 0 else []


def round_to_multiple(n: float, multiple: int, upper: int) -> int:
    return int(min(upper, max(multiple, round(n / multiple) * multiple)))


def uniform_spec(shape: ModelShape, head_energy: list[torch.Tensor], neuron_energy: list[torch.Tensor],
                 target: Target, multiple: int = 1) -> SubnetSpec:
    """Keep the same fraction of KV groups and of MLP neurons in every layer, hitting `target`.

    KV groups are coarse (often 2-8 per layer), so each possible number of kept groups is tried
    and the neuron count is solved for the remaining budget; the pair whose attention and MLP
    keep-ratios are closest wins among those that land nearest the target.

    Args:
        shape: the source model.
        head_energy: per layer, (heads,) importance of each query head; a group scores the sum.
        neuron_energy: per layer, (neurons,) importance of each MLP neuron.
        target: block parameters to keep.
        multiple: keep neuron counts at multiples of this (hardware-friendly widths).
    """
    max_groups = max(layer.num_kv_heads for layer in shape.layers)
    candidates = []
    for groups in range(1, max_groups + 1):
        ratio_a = groups / max_groups

        def blocks(ratio_m: float) -> tuple[int, list[tuple[int, int]]]:
            sizes = [(max(1, round(ratio_a * layer.num_kv_heads)),
                      round_to_multiple(ratio_m * layer.intermediate_size, multiple, layer.intermediate_size))
                     for layer in shape.layers]
            return _block_params(shape, sizes), sizes

        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if blocks(mid)[0] < target.block_params else (lo, mid)
        best = min((blocks(lo), blocks(hi)), key=lambda b: abs(b[0] - target.block_params))
        ratio_m = sum(s[1] for s in best[1]) / sum(layer.intermediate_size for layer in shape.layers)
        candidates.append((abs(best[0] - target.block_params), abs(ratio_a - ratio_m), best[1]))
    lowest = _block_params(shape, [(1, multiple) for _ in shape.layers])
    highest = params.block_params(shape)
    granularity = _block_params(shape, [(1, 2 * multiple)] * shape.num_layers) - lowest  # one neuron step everywhere
    if not lowest - granularity / 2 <= target.block_params <= highest:
        raise unreachable(target, lowest, highest, highest, "uniform")
    _, _, sizes = min(candidates, key=lambda c: (c[0] > granularity, c[1], c[0]))
    layers = []
    for layer, (groups, neurons), h_score, n_score in zip(shape.layers, sizes, head_energy, neuron_energy):
        group_score = h_score.reshape(layer.num_kv_heads, -1).sum(1)
        layers.append(LayerSpec.from_groups(layer, top_indices(group_score, groups), None,
                                            top_indices(n_score, neurons)))
    return SubnetSpec(shape, layers, None, {"method": "uniform", "target": target.description,
                                            "importance": "activation energy", "multiple": multiple})


def _block_params(shape: ModelShape, sizes: list[tuple[int, int]]) -> int:
    from ..arch.shape import LayerShape

    return sum(
        params.layer_params(shape, LayerShape(g * layer.heads_per_group, g, m))
        for layer, (g, m) in zip(shape.layers, sizes)
    )
