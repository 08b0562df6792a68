"""The sub-network search space over an importance-sorted model; every configuration is a SubnetSpec.

Dimensions: hidden size, number of layers (the most important L by `layer_rank`), KV groups and
query heads per group (so every configuration is legal under GQA), and MLP width — each one value
for all layers (`per_layer=False`) or one per layer. Widths can be held to hardware multiples;
the full size is always a choice, so every value of every dimension is reachable, top included.
Head size is not a dimension: cutting it would break RoPE, whose rotate-half pairs channel j with
j + head_dim/2 at a frequency fixed by j.

`space="nemotron-nas"` holds only what Nemotron-NAS engines serve: hidden size and heads fixed at
full (attention goes with its layer), MLP widths at multiples of 256 (and the full width).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter, can_prune_hidden
from ..arch.shape import ModelShape
from ..arch.spec import LayerSpec, SubnetSpec
from ..errors import UserError
from ..arch import nemotron_format


def _values(full: int, multiple: int, smallest: int = 1) -> list[int]:
    """Multiples of `multiple` from `smallest` up to `full`, always including `full`."""
    step = max(1, multiple)
    values = [v for v in range(step, full + 1, step) if v >= smallest]
    return values + [full] if not values or values[-1] != full else values


@dataclass(frozen=True)
class SearchSpace:
    shape: ModelShape
    layer_rank: tuple[int, ...]  # layer indices, most important first
    per_layer: bool = False
    multiple: int = 1  # MLP widths and hidden size held to multiples of this
    min_layers: int = 1
    space: str = "full"  # full | nemotron-nas (see the module docstring)

    def __post_init__(self) -> None:
        if self.space not in nemotron_format.SPACES:
            raise UserError(f"search space must be one of {', '.join(nemotron_format.SPACES)}, got {self.space!r}")
        if not self.shape.layers or not any(layer.num_kv_heads for layer in self.shape.layers):
            raise UserError("the search space is empty: the model has no layer with attention to choose from")
        if not 1 <= self.min_layers <= len(self.shape.layers):
            raise UserError(f"min_layers must be between 1 and {len(self.shape.layers)}, got {self.min_layers}")

    def dimensions(self) -> dict[str, list[int]]:
        """Every dimension and its values, smallest first."""
        ref = self.shape.layers[0]
        fixed = self.space == nemotron_format.SPACE
        hidden = self.shape.hidden_size
        keep_hidden = fixed or not can_prune_hidden(self.shape.family)  # Gemma: its embedding scale needs all
        dims = {"hidden": [hidden] if keep_hidden else _values(hidden, self.multiple),
                "layers": list(range(self.min_layers, len(self.shape.layers) + 1))}
        per = range(len(self.shape.layers)) if self.per_layer else [None]
        for i in per:
            layer = self.shape.layers[i] if i is not None else ref
            suffix = "" if i is None else f"_{i}"
            dims[f"kv_groups{suffix}"] = list(range(1 if not fixed else layer.num_kv_heads, layer.num_kv_heads + 1))
            dims[f"heads_per_group{suffix}"] = list(range(1 if not fixed else layer.heads_per_group,
                                                          layer.heads_per_group + 1))
            dims[f"mlp{suffix}"] = nemotron_format.search_widths(layer.intermediate_size, self.multiple) if fixed \
                else _values(layer.intermediate_size, self.multiple)
        return dims

    def _pick(self, config: dict, name: str, i: int) -> int:
        return config[f"{name}_{i}"] if self.per_layer else config[name]

    def to_spec(self, config: dict) -> SubnetSpec:
        """The SubnetSpec keeping the first k units of every dimension (the model must be sorted)."""
        dims = self.dimensions()
        bad = [f"{k}={config.get(k)!r}" for k in dims if config.get(k) not in dims[k]]
        if bad:
            raise UserError(f"configuration outside the search space: {', '.join(bad)}")
        kept = set(self.layer_rank[:config["layers"]])
        layers = []
        for i, layer in enumerate(self.shape.layers):
            if i not in kept:
                layers.append(LayerSpec([], [], []))
                continue
            layers.append(LayerSpec.from_groups(layer, list(range(self._pick(config, "kv_groups", i))),
                                                list(range(self._pick(config, "heads_per_group", i))),
                                                list(range(self._pick(config, "mlp", i)))))
        hidden = None if config["hidden"] == self.shape.hidden_size else list(range(config["hidden"]))
        return SubnetSpec(self.shape, layers, hidden, {"method": "nas", "config": dict(config)}).validate()

    def num_params(self, config: dict) -> int:
        return self.to_spec(config).num_params()

    def flops_per_token(self, config: dict) -> int:
        return self.to_spec(config).flops_per_token()

    def stitch(self, config: dict, adapter: ModelAdapter) -> tuple[SubnetSpec, dict]:
        """The sub-network of `config`, and no replacement weights (as `LevelSpace.stitch`)."""
        return self.to_spec(config), {}

    def slice(self, model: PreTrainedModel, adapter: ModelAdapter, config: dict) -> PreTrainedModel:
        """The sub-network of `config` of the sorted `model`, as a model of its own."""
        return adapter.slice(model, self.to_spec(config))

    def summary(self, config: dict) -> dict:
        """`config` in a report table's columns: its dimensions as they are."""
        return dict(config)

    def starting_points(self, feasible=None) -> list[dict]:
        """No configurations to start from: the samplers choose every trial (`LevelSpace.starting_points`)."""
        return []

    def constraint(self, bounds: tuple[float, float] | None, named: str | None = None):
        """The test every searched configuration passes: with `bounds`, `params_range_check`'s; without, None
        (every configuration is searched)."""
        return self.params_range_check(*bounds, named=named) if bounds else None

    def sample(self, rng: random.Random) -> dict:
        return {k: rng.choice(v) for k, v in self.dimensions().items()}

    def sample_spec(self, rng: random.Random, feasible=None, tries: int = 20_000) -> SubnetSpec:
        """A random sub-network as a SubnetSpec (the sampler supernet training takes), one `feasible` accepts."""
        for _ in range(tries):
            config = self.sample(rng)
            if feasible is None or feasible(config):
                return self.to_spec(config)
        raise UserError(f"{tries} random configurations in a row were outside the constraint; widen it")

    def params_range_check(self, low: float, high: float, probes: int = 1000, named: str | None = None):
        """A test of "total parameters between `low` and `high` times the full model's" for configurations.

        Raises a UserError when no configuration of the space can meet it, or when none of `probes`
        random configurations does: the samplers would then reject nearly every trial they draw.
        `named`: the range as the user gave it, for those messages (e.g. `--sparsity-range 0.2,0.4`).
        """
        full = self.to_spec(self.largest()).num_params()
        smallest = self.to_spec(self.smallest()).num_params() / full
        named = named or f"the range {low:g}-{high:g} of the parameters"
        if not 0 <= low < high or high < smallest or low > 1:
            raise UserError(f"no configuration has between {low:.3g} and {high:.3g} of the parameters ({named}): "
                            f"the space spans {smallest:.3f} to 1")

        def inside(config: dict) -> bool:
            return low <= self.to_spec(config).num_params() / full <= high

        rng = random.Random(0)
        dimensions = self.dimensions()
        if not any(inside({k: rng.choice(v) for k, v in dimensions.items()}) for _ in range(probes)):
            raise UserError(f"{named} admits none of {probes:,} random sub-networks of this space (they need "
                            f"{low:.3g}-{high:.3g} of the parameters), so the search would reject nearly every trial; "
                            "widen it")
        return inside

    def largest(self) -> dict:
        return {k: v[-1] for k, v in self.dimensions().items()}

    def smallest(self) -> dict:
        return {k: v[0] for k, v in self.dimensions().items()}
