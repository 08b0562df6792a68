"""Assemble a genotype from per-module scores by mixed-integer programming (Puzzle).

One binary x[m, l] per module m and level l: exactly one level per module, the cost inside the
budget band, at least one attention block kept, and the sum of the levels' replace-one scores
minimal. Solved by HiGHS through `scipy.optimize.milp`. The sum of replace-one KLs ignores how
modules interact, so the result is a strong first parent for the evolutionary search rather than
its end point (and a method of its own with no generations).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import UserError
from .budget import KINDS, Budget, CostTable, format_cost
from .genotype import Genotype


def assemble(scores: dict[str, list[list[float]]], table: CostTable, budget: Budget,
             time_limit: float = 60.0) -> Genotype:
    """The genotype inside `budget` whose summed per-module scores are least.

    Args:
        scores: kind -> layer -> level -> score, the same levels as `table`.
        time_limit: seconds HiGHS may take; its best solution so far is used after that.
    """
    variables = [(k, i, lv) for k in KINDS for i in range(table.num_layers())
                 for lv in range(table.num_levels(k, i))]
    for k in KINDS:
        for i in range(table.num_layers()):
            if len(scores[k][i]) != table.num_levels(k, i):
                raise UserError(f"replace-one scores of {k} {i} have {len(scores[k][i])} levels, the cost "
                                f"table {table.num_levels(k, i)}; score this database again")
    c = np.array([scores[k][i][lv] for k, i, lv in variables], dtype=float)
    cost = np.array([table.costs[k][i][lv] for k, i, lv in variables], dtype=float)
    one_level = np.zeros((len(KINDS) * table.num_layers(), len(variables)))
    for col, (k, i, _) in enumerate(variables):
        one_level[KINDS.index(k) * table.num_layers() + i, col] = 1.0
    attention_kept = np.array([1.0 if k == "attention" and lv > 0 and table.costs[k][i][lv] > 0 else 0.0
                               for k, i, lv in variables])
    constraints = [LinearConstraint(one_level, 1, 1),
                   LinearConstraint(cost[None, :], budget.target - budget.tolerance, budget.target),
                   LinearConstraint(attention_kept[None, :], 1, np.inf)]
    # HiGHS stops within an absolute gap of 1e-6 as well as a relative one: KLs of 1e-5 (a tiny model, mild
    # sparsity) would stop it far from the optimum, so the objective is scaled to a largest score of 1
    scale = float(np.abs(c).max()) or 1.0
    result = milp(c / scale, constraints=constraints, integrality=np.ones(len(variables)), bounds=Bounds(0, 1),
                  options={"time_limit": time_limit})
    if result.x is None:
        raise UserError(f"no level assignment fits the budget {format_cost(budget.target, table.metric)} "
                        f"(MIP solver: {result.message})")
    genes: dict[str, list[int]] = {k: [0] * table.num_layers() for k in KINDS}
    for col, (k, i, lv) in enumerate(variables):
        if result.x[col] > 0.5:
            genes[k][i] = lv
    return Genotype(tuple(genes["attention"]), tuple(genes["mlp"]))
