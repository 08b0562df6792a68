"""Random search spends exactly the evaluations it is given, stays in the budget, and returns the best."""

from __future__ import annotations

import pytest

from evoprune.errors import UserError
from evoprune.levels.budget import CostTable, make_budget
from evoprune.darwinlm.fitness import Stage
from evoprune.darwinlm.random_search import pool_for_evaluations, random_search, selection_evaluations

LADDER = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
QUICK = [Stage(0, 1024, 4), Stage(1024, 2048, 2), Stage(2048, 4096, 1)]


def score(g, stage: int) -> float:
    """A fixed pseudo-random fitness of a genotype at a stage."""
    return (sum((i + 3) * (a + 2 * m) for i, (a, m) in enumerate(zip(g.attention, g.mlp))) * 7919 + stage * 104729) % 1009


class ScoringEvaluator:
    """Scores with `score`; remembers the (deduplicated) pool it was given."""

    def __init__(self):
        self.evaluations, self.pool = 0, []

    def begin_selection(self, seed):
        pass

    def assign(self, pool):
        self.pool = list(pool)

    def score_stage(self, pool, models, s, stage, seed, seen_tokens, keep):
        self.evaluations += len(pool)
        return {g: score(g, s) for g in pool}

    def end_stage(self, kept):
        pass


def test_evaluations_per_selection_match_the_stage_survivors():
    assert selection_evaluations(17, QUICK) == 17 + 4 + 2
    assert selection_evaluations(3, QUICK) == 3 + 3 + 2
    assert selection_evaluations(1, QUICK) == 3
    assert pool_for_evaluations(143, QUICK) == 137  # bench/darwin.py's 143 evaluations of the quick profile
    assert pool_for_evaluations(6, QUICK) == 2 and selection_evaluations(2, QUICK) == 6
    assert pool_for_evaluations(9, QUICK) == 3 and pool_for_evaluations(8, QUICK) == 3
    with pytest.raises(UserError, match="at least 3 candidate evaluations"):
        pool_for_evaluations(2, QUICK)


def test_random_search_spends_the_evaluations_inside_the_budget_and_returns_the_winner():
    table = CostTable("params", {"attention": [LADDER] * 6, "mlp": [LADDER] * 6})
    budget = make_budget(table, table.full() * 0.5)
    ev = ScoringEvaluator()
    result = random_search(ev, table, budget, QUICK, evaluations=46, seed=3)
    assert result.pool_size == 40
    assert len(ev.pool) > 30  # long walks: few duplicates
    assert result.evaluations == ev.evaluations == selection_evaluations(len(ev.pool), QUICK) <= 46
    assert all(budget.admits(table.cost(g)) for g in ev.pool)
    alive = ev.pool
    for s, stage in enumerate(QUICK):
        alive = sorted(alive, key=lambda g: (score(g, s), ev.pool.index(g)))[:stage.survivors]
    assert result.best == alive[0]
    assert random_search(ScoringEvaluator(), table, budget, QUICK, evaluations=46, seed=3).best == result.best
