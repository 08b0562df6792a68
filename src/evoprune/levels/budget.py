"""The search budget: a cost per (module, level) table and the band a genotype's total must stay in.

Costs are exact parameters, FLOPs per token, or measured latency. A genotype is within budget
when target − tolerance ≤ cost ≤ target; the tolerance is the largest single level step, so
every budget-preserving level switch keeps a genotype inside the band.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .genotype import Genotype

KINDS = ("attention", "mlp")


@dataclass
class CostTable:
    """costs[kind][layer][level], in one metric."""

    metric: str
    costs: dict[str, list[list[float]]]

    def num_levels(self, kind: str, layer: int) -> int:
        return len(self.costs[kind][layer])

    def max_level(self, kind: str, layer: int) -> int:
        return self.num_levels(kind, layer) - 1

    def cost(self, g: Genotype) -> float:
        return sum(self.costs[k][i][lvl] for k in KINDS for i, lvl in enumerate(g.genes(k)))

    def full(self) -> float:
        return sum(levels[-1] for k in KINDS for levels in self.costs[k])

    def largest_step(self) -> float:
        return max(b - a for k in KINDS for levels in self.costs[k] for a, b in zip(levels, levels[1:]))

    def num_layers(self) -> int:
        return len(self.costs["attention"])


@dataclass(frozen=True)
class Budget:
    target: float
    tolerance: float

    def admits(self, cost: float) -> bool:
        return self.target - self.tolerance - 1e-6 <= cost <= self.target + 1e-6


def format_cost(value: float, metric: str) -> str:
    return f"{value:,.3f} ms" if metric == "latency" else f"{value:,.0f} {metric}"


def make_budget(table: CostTable, target: float) -> Budget:
    """The band for `target`, or a UserError giving the reachable range."""
    lowest = min(c for levels in table.costs["attention"] for c in levels if c > 0)  # one attention block kept
    highest = table.full()
    if not lowest < target < highest:
        raise UserError(f"budget {format_cost(target, table.metric)} is out of reach: the database reaches "
                        f"{format_cost(lowest, table.metric)} to {format_cost(highest, table.metric)} "
                        "of transformer blocks")
    return Budget(target, table.largest_step())


def uniform_genotype(table: CostTable, budget: Budget) -> Genotype:
    """The parent the search starts from: every module at the level nearest the target fraction, then
    repaired module by module (from the last layer) until the cost lies inside the band."""
    fraction = budget.target / table.full()
    genes = {}
    for k in KINDS:
        genes[k] = []
        for levels in table.costs[k]:
            full = levels[-1] or 1.0
            genes[k].append(min(range(len(levels)), key=lambda lv: (abs(levels[lv] / full - fraction), lv)))
    g = Genotype(tuple(genes["attention"]), tuple(genes["mlp"]))
    order = [(k, i) for i in reversed(range(table.num_layers())) for k in ("mlp", "attention")]
    for _ in range(10 * len(order)):
        cost = table.cost(g)
        if budget.admits(cost):
            return g
        for k, i in order:
            lv = g.genes(k)[i]
            new = lv - 1 if cost > budget.target else lv + 1
            if 0 <= new <= table.max_level(k, i):
                genes_k = list(g.genes(k))
                genes_k[i] = new
                candidate = g.with_genes(k, genes_k)
                if cost > budget.target or table.cost(candidate) <= budget.target:
                    g = candidate
                    break
    if not budget.admits(table.cost(g)):
        raise UserError(f"no level assignment fits the budget {format_cost(budget.target, table.metric)}")
    return g
