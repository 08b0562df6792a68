"""Level-switch mutation keeps the budget, and with `trade` moves it between attention, MLP and depth; the
starting parent is uniform and inside the budget."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evoprune.errors import UserError
from evoprune.levels.budget import CostTable, make_budget, uniform_genotype
from evoprune.levels.genotype import Genotype
from evoprune.darwinlm.mutation import mutate, num_switches

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


def walk(trade: bool, steps: int = 400) -> tuple[CostTable, list[tuple[Genotype, Genotype]]]:
    """(parent, child) pairs of a seeded walk of mutations on even ladders, 6 layers, 30% of the cost kept."""
    t = table(6, even_only=True)
    budget = make_budget(t, t.full() * 0.3)
    rng = random.Random(0)
    g, pairs = uniform_genotype(t, budget), []
    for _ in range(steps):
        child = mutate(g, t, budget, rng, trade=trade)
        assert budget.admits(t.cost(child)) and t.cost(child) == t.cost(g)  # even ladders: every switch is exact
        pairs.append((g, child))
        g = child
    return t, pairs


def removes(parent: Genotype, child: Genotype, kind: str) -> bool:
    return any(p > 0 and c == 0 for p, c in zip(parent.genes(kind), child.genes(kind)))


def restores(parent: Genotype, child: Genotype, kind: str) -> bool:
    return any(p == 0 and c > 0 for p, c in zip(parent.genes(kind), child.genes(kind)))


def test_trade_moves_budget_between_attention_and_mlp():
    _, pairs = walk(trade=True)
    shift = [sum(c.attention) - sum(p.attention) for p, c in pairs]  # levels moved from MLP into attention
    assert sum(d > 0 for d in shift) >= 0.2 * len(pairs)
    assert sum(d < 0 for d in shift) >= 0.2 * len(pairs)
    for kind in ("attention", "mlp"):  # depth: blocks are removed (level 0) and brought back, of both kinds
        assert sum(removes(p, c, kind) for p, c in pairs) >= 0.05 * len(pairs)
        assert sum(restores(p, c, kind) for p, c in pairs) >= 0.05 * len(pairs)
    # a removed block's budget goes to the other kind, both ways
    assert sum(removes(p, c, "attention") and d < 0 for (p, c), d in zip(pairs, shift)) >= 10
    assert sum(removes(p, c, "mlp") and d > 0 for (p, c), d in zip(pairs, shift)) >= 10


def test_without_trade_no_budget_crosses_kinds():
    t, pairs = walk(trade=False)
    assert sum(p != c for p, c in pairs) >= 0.8 * len(pairs)  # the walk does move
    for p, c in pairs:
        assert sum(c.attention) == sum(p.attention) and sum(c.mlp) == sum(p.mlp)
        for kind in ("attention", "mlp"):
            assert sum(t.costs[kind][i][lv] for i, lv in enumerate(c.genes(kind))) == \
                sum(t.costs[kind][i][lv] for i, lv in enumerate(p.genes(kind)))


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
