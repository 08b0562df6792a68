"""The search space over the second-order database's levels (`nas.weights: database`), the space darwin searches.

One dimension per module: `attention_<i>` and `mlp_<i>` are the levels of layer i's attention and MLP (0 =
removed, the last = whole), so a configuration is a DarwinLM genotype, and its sub-network is the database's
stitched model: the units each level keeps, with the output projections OBS updated to make up for the
removed ones. Parameters and FLOPs add up level by level (the database's exact cost of each level, plus the
embeddings and LM head), so they need no model built. A configuration keeping no attention block is
refused (as darwin's budget does): such a model cannot mix tokens.

Random configurations of this many dimensions concentrate near half the block parameters, so the search
starts from chosen genotypes and moves from there: the MIP assemblies of replace-one KLs (`mip_start`, the default)
or the uniform genotypes (every module at the same level; `starting_points`, `nas.start: uniform`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import PreTrainedModel

from ..arch.adapter import ModelAdapter
from ..arch.params import embedding_params
from ..arch.shape import ModelShape
from ..arch.spec import SubnetSpec
from ..errors import UserError
from ..obs.database import KINDS, Database, DatabaseSettings, planned_costs
from ..weights.compute_dtype import inference_slice

METRICS = ("params", "flops")


@dataclass(frozen=True)
class LevelSpace:
    shape: ModelShape
    costs: dict[str, dict[str, list[list[int]]]]  # metric -> kind -> layer -> level -> exact cost
    db: Database | None = None  # None: planned from the shape, to check a range before the database exists

    @classmethod
    def of_database(cls, db: Database) -> "LevelSpace":
        return cls(db.shape, {metric: db.costs(metric) for metric in METRICS}, db)

    @classmethod
    def planned(cls, shape: ModelShape, settings: DatabaseSettings) -> "LevelSpace":
        """The space of the database `settings` will build for a model of `shape` (its costs, no weights)."""
        settings.check()
        return cls(shape, {metric: planned_costs(shape, settings, metric) for metric in METRICS})

    def dimensions(self) -> dict[str, list[int]]:
        """Every module's levels, smallest first."""
        return {f"{kind}_{i}": list(range(len(levels)))
                for kind in KINDS for i, levels in enumerate(self.costs["params"][kind])}

    def levels(self, config: dict) -> tuple[list[int], list[int]]:
        """The genotype of `config`: (attention levels, MLP levels), one per layer."""
        dims = self.dimensions()
        bad = [f"{k}={config.get(k)!r}" for k in dims if config.get(k) not in dims[k]]
        if bad:
            raise UserError(f"configuration outside the search space: {', '.join(bad)}")
        return tuple([config[f"{kind}_{i}"] for i in range(self.shape.num_layers)] for kind in KINDS)

    def _cost(self, config: dict, metric: str) -> int:
        return sum(self.costs[metric][kind][i][level]
                   for kind, levels in zip(KINDS, self.levels(config)) for i, level in enumerate(levels))

    def num_params(self, config: dict) -> int:
        return embedding_params(self.shape) + self._cost(config, "params")

    def flops_per_token(self, config: dict) -> int:
        lm_head = 2 * self.shape.vocab_size * self.shape.hidden_size
        return lm_head + self._cost(config, "flops")

    def keeps_attention(self, config: dict) -> bool:
        return any(self.costs["params"]["attention"][i][level] > 0 for i, level in enumerate(self.levels(config)[0]))

    def stitch(self, config: dict, adapter: ModelAdapter) -> tuple[SubnetSpec, dict[str, torch.Tensor]]:
        """The sub-network of `config` and the database's updated weights to slice in."""
        if self.db is None:
            raise RuntimeError("a planned LevelSpace has no weights; build it with LevelSpace.of_database")
        attention, mlp = self.levels(config)
        meta = {"method": "nas", "weights": "database", "genotype": {"attention": attention, "mlp": mlp}}
        return self.db.stitch(attention, mlp, adapter, meta)

    def slice(self, model: PreTrainedModel, adapter: ModelAdapter, config: dict) -> PreTrainedModel:
        """The sub-network of `config` for inference (it shares the dense embeddings and LM head)."""
        return inference_slice(model, adapter, *self.stitch(config, adapter))

    def summary(self, config: dict) -> dict:
        """`config` in a report table's columns: the levels of every layer, attention then MLP."""
        attention, mlp = self.levels(config)
        return {"attention_levels": " ".join(map(str, attention)), "mlp_levels": " ".join(map(str, mlp))}

    def largest(self) -> dict:
        return {k: v[-1] for k, v in self.dimensions().items()}

    def smallest(self) -> dict:
        return {k: v[0] for k, v in self.dimensions().items()}

    def sample(self, rng: random.Random) -> dict:
        return {k: rng.choice(v) for k, v in self.dimensions().items()}

    def starting_points(self, feasible: Callable[[dict], bool] | None = None) -> list[dict]:
        """The uniform genotypes `feasible` accepts, largest first: every module at the same share of its ladder."""
        dims = self.dimensions()
        steps = max(len(v) for v in dims.values()) - 1
        points = [{k: v[round(step * (len(v) - 1) / steps)] for k, v in dims.items()} for step in range(steps, 0, -1)]
        return [p for p in points if feasible is None or feasible(p)]

    def constraint(self, bounds: tuple[float, float] | None, named: str | None = None) -> Callable[[dict], bool]:
        """The test every searched configuration passes: some attention kept and, with `bounds`, total
        parameters between those fractions of the dense model's (`params_range_check`)."""
        in_range = self.params_range_check(*bounds, named=named) if bounds else None
        return lambda config: self.keeps_attention(config) and (in_range is None or in_range(config))

    def params_range_check(self, low: float, high: float, probes: int = 1000, named: str | None = None):
        """A test of "total parameters between `low` and `high` times the full model's" for configurations.

        Raises a UserError when no configuration can meet it, or when none of `probes` random configurations
        does (as `SearchSpace.params_range_check`): the random and NSGA-II samplers would then reject nearly
        every trial. Random configurations keep about half the block parameters, so a narrow range far from
        that is refused even where the uniform genotypes would give the local search a start.
        """
        full = self.num_params(self.largest())
        smallest = embedding_params(self.shape) / full
        named = named or f"the range {low:g}-{high:g} of the parameters"
        if not 0 <= low < high or high < smallest or low > 1:
            raise UserError(f"no configuration has between {low:.3g} and {high:.3g} of the parameters ({named}): "
                            f"the space spans {smallest:.3f} to 1")

        def inside(config: dict) -> bool:
            return low <= self.num_params(config) / full <= high

        rng = random.Random(0)
        if not any(inside(self.sample(rng)) for _ in range(probes)):
            raise UserError(f"{named} admits none of {probes:,} random sub-networks of this space (they need "
                            f"{low:.3g}-{high:.3g} of the parameters), so the search would reject nearly every trial; "
                            "widen it")
        return inside
