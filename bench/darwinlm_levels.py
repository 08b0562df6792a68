"""DarwinLM's database and level files read as evoprune objects (no DarwinLM code needed here).

DarwinLM's `struct_prune.py` writes one folder per pruned projection (`model.layers.I.self_attn.o_proj`,
`model.layers.I.mlp.down_proj`) holding `L.pth`, the full-shape weight at level L: the columns of the
removed heads / neurons are zero, the kept ones carry the OBS update; q/k/v and gate/up are never
changed. Its search writes `evo-*-configuration-*.txt`, one `name: level` line per projection. A
genotype is such a {name: level} mapping.

`spec_from_levels` turns a genotype into a SubnetSpec plus the compensated weights to slice in. The
kept units are read off the zero columns. DarwinLM prunes query heads one by one, so a KV group may
keep fewer heads than another, which a SubnetSpec cannot hold (every kept group keeps the same count);
such a group is padded with its lowest removed heads, whose o_proj columns are zero: the sliced model
computes exactly what DarwinLM's dense-shape model computes, and the spec counts the padded heads'
q/o weights as kept. `darwinlm_block_sparsity` is DarwinLM's own count (removed heads' q and o, K/V
kept unless every head of the group is removed).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch

from evoprune.arch import params
from evoprune.arch.shape import LayerShape, ModelShape
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.errors import UserError

ATTENTION = "model.layers.{}.self_attn.o_proj"
MLP = "model.layers.{}.mlp.down_proj"
LINE = re.compile(r"^\s*(model\.layers\.\d+\.(?:self_attn\.o_proj|mlp\.down_proj))\s*:\s*(\d+)\s*$")


def level_lists(shape: ModelShape, sparsity: float, multiple: int = 32) -> tuple[list[int], list[int], int]:
    """Columns removed per level for o_proj and down_proj (DarwinLM's `--cols_removed_attn/_mlp`), and the
    level whose uniform genotype removes `sparsity` of the block parameters (its `--target_level`).

    DarwinLM sets these lists by hand per model (11 levels, about 10% apart, MLP widths at multiples of
    32). One head is the attention's smallest step and the lists may hold no repeats, so a model with
    fewer than 10 query heads gets num_heads + 1 levels, one head apart. The target level is the one whose
    attention fraction is nearest `sparsity`; its MLP entry is set so that the uniform genotype removes
    `sparsity` of the block parameters by DarwinLM's count, the other MLP entries evenly spaced below
    and above it.
    """
    layer = shape.layers[0]
    if any(ls != layer for ls in shape.layers):
        raise UserError("DarwinLM's level lists are one per model; this model's layers differ in shape")
    heads, hd, width = layer.num_heads, shape.head_dim, layer.intermediate_size
    n = min(11, heads + 1)
    removed_heads = [round(k * heads / (n - 1)) for k in range(n)]
    target = min(range(n), key=lambda k: (round(abs(removed_heads[k] / heads - sparsity), 9), -k))
    total = params.layer_params(shape, layer)
    kept_heads = heads - removed_heads[target]
    attention_removed = params.attention_params(shape, layer) - params.attention_params(
        shape, LayerShape(kept_heads, layer.num_kv_heads if kept_heads else 0, 0))
    per_neuron = params.mlp_params(shape, LayerShape(0, 0, 2)) - params.mlp_params(shape, LayerShape(0, 0, 1))
    middle = (sparsity * total - attention_removed) / per_neuron
    if not 0 < middle < width:
        raise UserError(f"no MLP width reaches {sparsity:.0%} of the block parameters at level {target}")
    mlp = [middle * k / target if k <= target else middle + (width - middle) * (k - target) / (n - 1 - target)
           for k in range(n)]
    mlp = [0] + [int(round(x / multiple)) * multiple for x in mlp[1:-1]] + [width]
    if sorted(set(mlp)) != mlp:
        raise UserError(f"MLP level list {mlp} repeats a width; use a smaller multiple")
    return [h * hd for h in removed_heads], mlp, target


def projection_names(num_layers: int) -> list[str]:
    return [f.format(i) for i in range(num_layers) for f in (ATTENTION, MLP)]


def uniform_levels(num_layers: int, level: int) -> dict[str, int]:
    """DarwinLM's starting point: every projection at `level`."""
    return {name: level for name in projection_names(num_layers)}


def read_level_file(path: str | os.PathLike) -> dict[str, int]:
    """A DarwinLM configuration file (`name: level` lines) as a genotype."""
    levels = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = LINE.match(line)
        if m is None:
            raise UserError(f"{path}:{number}: not a DarwinLM level line: {line!r}")
        levels[m.group(1)] = int(m.group(2))
    return levels


def level_weight(database: str | os.PathLike, name: str, level: int) -> torch.Tensor:
    path = Path(database) / name / f"{level}.pth"
    if not path.is_file():
        raise UserError(f"DarwinLM database has no level {level} for {name}: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def spec_from_levels(shape: ModelShape, database: str | os.PathLike, levels: dict[str, int],
                     meta: dict | None = None) -> tuple[SubnetSpec, dict[str, torch.Tensor], dict]:
    """The genotype `levels` of DarwinLM's database as (SubnetSpec, sliced replacement weights, counts)."""
    layers, replace, counted = [], {}, []
    hd = shape.head_dim
    for i, layer in enumerate(shape.layers):
        attention = level_weight(database, ATTENTION.format(i), levels[ATTENTION.format(i)])
        mlp = level_weight(database, MLP.format(i), levels[MLP.format(i)])
        alive = attention.reshape(attention.shape[0], layer.num_heads, hd).ne(0).any(0).any(-1).tolist()
        heads = [h for h in range(layer.num_heads) if alive[h]]
        neurons = mlp.ne(0).any(0).nonzero().flatten().tolist()
        groups = sorted({h // layer.heads_per_group for h in heads})
        counted.append(LayerShape(len(heads), len(groups), len(neurons)))
        padded = _padded_heads(heads, groups, layer.heads_per_group)
        layers.append(LayerSpec(padded, groups, neurons))
        if padded:
            cols = torch.tensor([h * hd + j for h in padded for j in range(hd)])
            replace[f"{ATTENTION.format(i)}.weight"] = attention[:, cols].contiguous()
        if neurons:
            replace[f"{MLP.format(i)}.weight"] = mlp[:, torch.tensor(neurons)].contiguous()
    spec = SubnetSpec(shape, layers, None, dict(meta or {})).validate()
    darwinlm_shape = ModelShape(**{**shape.to_dict(), "layers": tuple(counted)})
    counts = {"spec_block_sparsity": spec.block_sparsity(),
              "darwinlm_block_sparsity": 1 - params.block_params(darwinlm_shape) / params.block_params(shape),
              "padded_heads": sum(len(ls.heads) for ls in layers) - sum(c.num_heads for c in counted),
              "kept_heads": sum(c.num_heads for c in counted), "kept_neurons": sum(c.intermediate_size for c in counted)}
    return spec, replace, counts


def _padded_heads(heads: list[int], groups: list[int], per_group: int) -> list[int]:
    """`heads` plus the lowest removed heads of each kept group, until every kept group keeps as many as the
    fullest one."""
    if not heads:
        return []
    by_group = {g: [h for h in heads if h // per_group == g] for g in groups}
    need = max(len(v) for v in by_group.values())
    out = []
    for g, kept in by_group.items():
        extra = [h for h in range(g * per_group, (g + 1) * per_group) if h not in kept][:need - len(kept)]
        out += kept + extra
    return sorted(out)


def dense_shape_model(dense: torch.nn.Module, database: str | os.PathLike, levels: dict[str, int]) -> torch.nn.Module:
    """What DarwinLM itself evaluates: a copy of the dense model with every projection's level weight loaded
    in its full shape (its `load_layers`)."""
    model = copy.deepcopy(dense)
    for name, level in levels.items():
        module = model.get_submodule(name)
        module.weight.data = level_weight(database, name, level).to(module.weight.dtype)
    return model
