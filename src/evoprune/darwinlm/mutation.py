"""Budget-preserving level-switch mutation (DarwinLM).

A switch lowers one module by a level and raises another by a level. By default the two are of
the same kind (attention with attention, MLP with MLP); with `trade` any two modules may swap
budget, so attention, MLP and depth (level 0 removes a block) compete under one budget. A switch
is only taken if the genotype stays inside the budget band; on ladders with equal steps the cost
is preserved exactly.
"""

from __future__ import annotations

import random

from ..levels.budget import KINDS, Budget, CostTable
from ..levels.genotype import Genotype


def num_switches(rng: random.Random) -> int:
    """min(randint(1,3), randint(1,3)): one switch most often, three rarely."""
    return min(rng.randint(1, 3), rng.randint(1, 3))


def mutate(parent: Genotype, table: CostTable, budget: Budget, rng: random.Random, trade: bool = False,
           max_tries: int = 200, scale: int = 1) -> Genotype:
    """`scale` times DarwinLM's number of switches (1: the paper's mutation)."""
    genes = {k: list(parent.genes(k)) for k in KINDS}
    modules = [(k, i) for k in KINDS for i in range(table.num_layers())]
    for _ in range(num_switches(rng) * scale):
        for _ in range(max_tries):
            down = rng.choice([m for m in modules if genes[m[0]][m[1]] > 0])
            ups = [m for m in modules if m != down and (trade or m[0] == down[0])
                   and genes[m[0]][m[1]] < table.max_level(*m)]
            if not ups:
                continue
            up = rng.choice(ups)
            genes[down[0]][down[1]] -= 1
            genes[up[0]][up[1]] += 1
            candidate = Genotype(tuple(genes["attention"]), tuple(genes["mlp"]))
            if budget.admits(table.cost(candidate)) and any(candidate.attention):  # some attention must remain
                break
            genes[down[0]][down[1]] += 1
            genes[up[0]][up[1]] -= 1
    return Genotype(tuple(genes["attention"]), tuple(genes["mlp"]))


def random_genotype(table: CostTable, budget: Budget, rng: random.Random, start: Genotype, steps: int = 200,
                    trade: bool = True) -> Genotype:
    """A random genotype inside the budget: a long random walk of switches from `start` (random-search baseline)."""
    g = start
    for _ in range(steps):
        g = mutate(g, table, budget, rng, trade=trade)
    return g
