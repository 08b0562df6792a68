"""Depth pruning (ShortGPT): remove the whole layers whose output is most similar to their input."""

from __future__ import annotations

from ..arch import params
from ..arch.shape import ModelShape
from ..arch.spec import LayerSpec, SubnetSpec
from ..arch.target import Target, unreachable


def depth_spec(shape: ModelShape, block_influence: list[float], target: Target) -> SubnetSpec:
    """Drop layers in order of increasing block influence until the kept block parameters are nearest `target`."""
    order = sorted(range(shape.num_layers), key=lambda i: block_influence[i])
    sizes = [params.layer_params(shape, layer) for layer in shape.layers]
    kept = sum(sizes)
    best = (abs(kept - target.block_params), 0)
    for n, i in enumerate(order[:-1], start=1):  # always keep at least one layer
        kept -= sizes[i]
        best = min(best, (abs(kept - target.block_params), n))
    lowest = min(sizes)
    highest = sum(sizes)
    if target.block_params < lowest / 2:
        raise unreachable(target, lowest, highest, highest, "depth")
    removed = set(order[:best[1]])
    layers = [LayerSpec([], [], []) if i in removed else LayerSpec.full(layer) for i, layer in enumerate(shape.layers)]
    return SubnetSpec(shape, layers, None, {"method": "depth", "target": target.description,
                                            "importance": "block influence (ShortGPT)",
                                            "removed_layers": sorted(removed)})
