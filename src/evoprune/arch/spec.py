"""SubnetSpec: the one description of a sub-network that every method produces.

For each layer it lists which query heads, KV groups and MLP neurons of the source model are
kept (sorted indices into the source model), plus the kept hidden channels. An empty head
list removes the attention block; an empty neuron list removes the MLP block; a layer with
neither is dropped. Everything downstream (slicing, export, evaluation) takes a SubnetSpec
and never needs to know which search made it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import UserError
from . import params
from .shape import LayerShape, ModelShape

SPEC_FORMAT = "evoprune.subnet_spec/1"


@dataclass
class LayerSpec:
    """Kept units of one layer, as indices into the source layer."""

    heads: list[int]  # query heads, 0 .. num_heads-1
    kv_heads: list[int]  # KV groups, 0 .. num_kv_heads-1
    neurons: list[int]  # MLP intermediate neurons

    @property
    def has_attention(self) -> bool:
        return bool(self.kv_heads)

    @property
    def has_mlp(self) -> bool:
        return bool(self.neurons)

    @property
    def is_dropped(self) -> bool:
        return not self.has_attention and not self.has_mlp

    @classmethod
    def full(cls, layer: LayerShape) -> "LayerSpec":
        return cls(
            list(range(layer.num_heads)), list(range(layer.num_kv_heads)), list(range(layer.intermediate_size))
        )

    @classmethod
    def from_groups(cls, layer: LayerShape, kv_heads: list[int], heads_in_group: list[int] | None = None,
                    neurons: list[int] | None = None) -> "LayerSpec":
        """Keep whole KV groups (and, optionally, the same query-head slots inside each group)."""
        rep = layer.heads_per_group
        slots = list(range(rep)) if heads_in_group is None else sorted(heads_in_group)
        kv = sorted(kv_heads)
        heads = [g * rep + s for g in kv for s in slots] if slots else []
        return cls(heads, kv if heads else [], list(range(layer.intermediate_size)) if neurons is None else sorted(neurons))


@dataclass
class SubnetSpec:
    """A sub-network of the model described by `source`."""

    source: ModelShape
    layers: list[LayerSpec]
    hidden: list[int] | None = None  # kept hidden channels; None keeps all
    meta: dict[str, Any] = field(default_factory=dict)  # who made it and how (method, target ...)

    @classmethod
    def full(cls, source: ModelShape, **meta: Any) -> "SubnetSpec":
        return cls(source, [LayerSpec.full(layer) for layer in source.layers], None, dict(meta))

    # ---- derived shapes and counts -------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.source.hidden_size if self.hidden is None else len(self.hidden)

    def result_shape(self) -> ModelShape:
        """The shape of the sliced model: dropped layers removed, sizes from kept counts."""
        layers = tuple(
            LayerShape(len(ls.heads), len(ls.kv_heads), len(ls.neurons)) for ls in self.layers if not ls.is_dropped
        )
        return ModelShape(**{**self.source.to_dict(), "layers": layers, "hidden_size": self.hidden_size})

    def kept_layers(self) -> list[int]:
        """Source indices of the layers that survive (have attention or MLP)."""
        return [i for i, ls in enumerate(self.layers) if not ls.is_dropped]

    def num_params(self) -> int:
        return params.total_params(self.result_shape())

    def block_params(self) -> int:
        return params.block_params(self.result_shape())

    def flops_per_token(self, context: int = 1024) -> int:
        return params.flops_per_token(self.result_shape(), context)

    def block_sparsity(self) -> float:
        """Fraction of the source's transformer-block parameters removed."""
        return 1.0 - self.block_params() / params.block_params(self.source)

    def is_identity(self) -> bool:
        return self.hidden is None and all(
            ls == LayerSpec.full(shape) for ls, shape in zip(self.layers, self.source.layers)
        )

    def is_uniform(self) -> bool:
        """True when the result is an ordinary model: every kept layer has both blocks, same sizes."""
        shapes = self.result_shape().layers
        return bool(shapes) and all(s.num_kv_heads and s.intermediate_size and s == shapes[0] for s in shapes)

    # ---- validation -------------------------------------------------------------------
    def validate(self, against: ModelShape | None = None) -> "SubnetSpec":
        """Check the spec against its source (and `against`, the model it will be applied to).

        Raises:
            UserError: naming every problem found (first few per kind).
        """
        if against is not None:
            _check_same_model(self.source, against)
        problems: list[str] = []
        if len(self.layers) != self.source.num_layers:
            problems.append(f"spec has {len(self.layers)} layers, model has {self.source.num_layers}")
        for i, (ls, shape) in enumerate(zip(self.layers, self.source.layers)):
            problems += [f"layer {i}: {p}" for p in _layer_problems(ls, shape)]
        if self.hidden is not None:
            problems += [f"hidden channels: {p}" for p in _index_problems(self.hidden, self.source.hidden_size)]
            if not self.hidden:
                problems.append("hidden channels: none kept")
        if not self.kept_layers():
            problems.append("every layer is removed")
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise UserError("invalid SubnetSpec: " + "; ".join(problems[:5]) + more)
        return self

    # ---- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": SPEC_FORMAT,
            "source": self.source.to_dict(),
            "hidden": self.hidden,
            "layers": [{"heads": ls.heads, "kv_heads": ls.kv_heads, "neurons": ls.neurons} for ls in self.layers],
            "meta": self.meta,
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SubnetSpec":
        if not isinstance(d, dict) or d.get("format") != SPEC_FORMAT:
            raise UserError(f"not a SubnetSpec: expected \"format\": \"{SPEC_FORMAT}\"")
        try:
            source = ModelShape.from_dict(d["source"])
            layers = [LayerSpec(list(x["heads"]), list(x["kv_heads"]), list(x["neurons"])) for x in d["layers"]]
            hidden = None if d.get("hidden") is None else list(d["hidden"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"malformed SubnetSpec: {type(e).__name__}: {e}") from None
        return cls(source, layers, hidden, dict(d.get("meta") or {})).validate()

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "SubnetSpec":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"SubnetSpec file not found: {path}")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"SubnetSpec {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def summary(self) -> dict:
        shape = self.result_shape()
        return {
            "layers_kept": len(shape.layers),
            "attention_blocks": sum(ls.has_attention for ls in self.layers),
            "mlp_blocks": sum(ls.has_mlp for ls in self.layers),
            "hidden_size": self.hidden_size,
            "params": self.num_params(),
            "block_params": self.block_params(),
            "block_sparsity": round(self.block_sparsity(), 6),
        }


def _index_problems(idx: list[int], n: int) -> list[str]:
    out = []
    if any(not isinstance(i, int) or isinstance(i, bool) for i in idx):
        return ["indices must be integers"]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        out.append(f"index {bad[0]} out of range 0..{n - 1}")
    if len(set(idx)) != len(idx):
        dup = next(i for i in idx if idx.count(i) > 1)
        out.append(f"duplicate index {dup}")
    elif idx != sorted(idx):
        out.append("indices must be sorted")
    return out


def _layer_problems(ls: LayerSpec, shape: LayerShape) -> list[str]:
    out = [f"heads: {p}" for p in _index_problems(ls.heads, shape.num_heads)]
    out += [f"kv_heads: {p}" for p in _index_problems(ls.kv_heads, shape.num_kv_heads)]
    out += [f"neurons: {p}" for p in _index_problems(ls.neurons, shape.intermediate_size)]
    if out:
        return out
    if bool(ls.heads) != bool(ls.kv_heads):
        return ["query heads and KV groups must be both empty (attention removed) or both non-empty"]
    rep = shape.heads_per_group
    per_group = {g: 0 for g in ls.kv_heads}
    for h in ls.heads:
        if h // rep not in per_group:
            return [f"query head {h} belongs to KV group {h // rep}, which is not kept"]
        per_group[h // rep] += 1
    counts = sorted(set(per_group.values()))
    if counts and (len(counts) > 1 or counts[0] == 0):
        return [
            f"kept query heads per KV group are {[per_group[g] for g in ls.kv_heads]}; every kept group must keep "
            f"the same number (at least 1) so the layer stays valid grouped-query attention"
        ]
    return []


def _check_same_model(a: ModelShape, b: ModelShape) -> None:
    if a != b:
        raise UserError(f"SubnetSpec was made for a different model ({a.describe()}); this model is {b.describe()}")
