"""Random search over a database's genotypes: the baseline the evolutionary search has to beat.

Random genotypes inside the budget (random walks of level switches from the uniform one) go
through the same selection stages as the evolution, as many as fit a given number of candidate
evaluations, so both searches spend the same scoring budget.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from ..errors import UserError
from ..levels.budget import Budget, CostTable, uniform_genotype
from .fitness import CandidateEvaluator, Stage, select
from ..levels.genotype import Genotype
from .mutation import random_genotype


@dataclass(frozen=True)
class RandomSearchResult:
    best: Genotype
    pool_size: int  # random genotypes drawn (duplicates are scored once)
    evaluations: int  # candidate evaluations made
    seconds: float


def selection_evaluations(pool_size: int, stages: list[Stage]) -> int:
    """Candidate evaluations `select` makes on `pool_size` distinct genotypes (each stage scores the last one's survivors)."""
    total, alive = 0, pool_size
    for stage in stages:
        total += alive
        alive = min(alive, max(1, stage.survivors))
    return total


def pool_for_evaluations(evaluations: int, stages: list[Stage]) -> int:
    """The largest pool whose selection makes at most `evaluations` candidate evaluations."""
    if evaluations < selection_evaluations(1, stages):
        raise UserError(f"random search needs at least {len(stages)} candidate evaluations (one per stage), "
                        f"got {evaluations}")
    n = evaluations
    while selection_evaluations(n, stages) > evaluations:
        n -= 1
    return n


def random_search(evaluator: CandidateEvaluator, table: CostTable, budget: Budget, stages: list[Stage],
                  evaluations: int, seed: int = 0, walk: int = 100, trade: bool = True) -> RandomSearchResult:
    """Score as many random genotypes as `evaluations` allows through `stages`; return the winner.

    Args:
        evaluations: candidate evaluations to spend (e.g. those of an evolutionary search).
        walk: level-switch mutations from the uniform genotype to each random one.
        trade: whether switches may move budget between attention and MLP (as in the search).
    """
    n = pool_for_evaluations(evaluations, stages)
    rng = random.Random(seed)
    start = uniform_genotype(table, budget)
    started, before = time.time(), evaluator.evaluations
    pool = [random_genotype(table, budget, rng, start, walk, trade) for _ in range(n)]
    best, _ = select(pool, stages, evaluator, seed=seed)
    return RandomSearchResult(best, n, evaluator.evaluations - before, time.time() - started)
