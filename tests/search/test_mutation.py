"""Level-switch mutation keeps the budget; the starting parent is uniform and inside it."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evoprune.errors import UserError
from evoprune.search.budget import CostTable, make_budget, uniform_genotype
from evoprune.search.genotype import Genotype
from evoprune.search.mutation import mutate, num_switches

ATTENTION = [0, 148, 295, 443, 590, 664, 885]  # SmolLM2-like: uneven GQA steps
MLP_EVEN = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]  # evenly spaced ladder


def table(layers: int, even_only: bool = False) -> CostTable:
    att = [list(MLP_EVEN[:7])] * layers if even_only else [ATTENTION] * layers
    return CostTable("params", {"attention": att, "mlp": [MLP_EVEN] * layers})


@given(layers=st.integers(2, 12), fraction=st.floats(0.2, 0.8), seed=st.integers(0, 10_000), trade=st.booleans())
@settings(max_examples=60, deadline=None)
def test_mutation_stays_in_budget_band(layers, fraction, seed, trade):
    t = table(layers)
    budget = make_budget(t, t.full() * fraction)
    rng = random.Random(seed)
    g = uniform_genotype(t, budget)
    assert budget.admits(t.cost(g))
    for _ in range(20):
        g = mutate(g, t, budget, rng, trade=trade)
        assert budget.admits(t.cost(g))
        assert all(0 <= lv <= t.max_level(k, i) for k in ("attention", "mlp") for i, lv in enumerate(g.genes(k)))


@given(layers=st.integers(2, 12), fraction=st.floats(0.2, 0.8), seed=st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_same_kind_switches_on_even_ladders_preserve_cost_exactly(layers, fraction, seed):
    t = table(layers, even_only=True)
    budget = make_budget(t, t.full() * fraction)
    rng = random.Random(seed)
    parent = uniform_genotype(t, budget)
    for _ in range(20):
        child = mutate(parent, t, budget, rng, trade=False)
        assert t.cost(child) == t.cost(parent)
        assert sum(child.attention) == sum(parent.attention) and sum(child.mlp) == sum(parent.mlp)
        parent = child


def test_trade_moves_budget_between_attention_and_mlp():
    t = table(6, even_only=True)
    budget = make_budget(t, t.full() * 0.5)
    rng = random.Random(0)
    g = uniform_genotype(t, budget)
    start = sum(g.attention)
    moved = False
    for _ in range(100):
        g = mutate(g, t, budget, rng, trade=True)
        moved |= sum(g.attention) != start
    assert moved


def test_number_of_switches_distribution():
    rng = random.Random(0)
    counts = [num_switches(rng) for _ in range(9000)]
    # P(1) = 5/9, P(2) = 3/9, P(3) = 1/9
    assert abs(counts.count(1) / 9000 - 5 / 9) < 0.02
    assert abs(counts.count(3) / 9000 - 1 / 9) < 0.02


def test_unreachable_budget_gives_the_range():
    t = table(4)
    with pytest.raises(UserError, match="out of reach"):
        make_budget(t, t.full() * 1.5)


def test_genotype_json_round_trip():
    g = Genotype((1, 2, 0), (3, 0, 4))
    assert Genotype.from_dict(g.to_dict()) == g
