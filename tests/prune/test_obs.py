"""Grouped OBS: equals least-squares reconstruction, costs equal true error increases, ladders are legal."""

from __future__ import annotations

import pytest
import torch

from evoprune.arch.shape import LayerShape
from evoprune.prune.levels import AttentionShape
from evoprune.prune.module_levels import solve_attention_levels, solve_mlp_levels
from evoprune.prune.obs import HessianAccumulator, inverse_hessian, neuron_chain, obs_cost, obs_remove


def problem(d_out=6, d_in=12, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64) @ torch.randn(d_in, d_in, generator=g, dtype=torch.float64)
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    acc = HessianAccumulator(d_in)
    for chunk in X.split(70):
        acc.add_batch(chunk)
    return W, X, acc


def least_squares(W, H, kept):
    return W @ H[:, kept] @ torch.linalg.inv(H[kept][:, kept])


def error(W, W_new_full, H):
    D = W - W_new_full
    return float(torch.einsum("oi,ij,oj->", D, H, D))


def test_accumulated_hessian_and_damping():
    W, X, acc = problem()
    assert torch.allclose(acc.H, 2 * X.T @ X / len(X))
    H = acc.hessian(0.05)
    raw = 2 * X.T @ X / len(X)
    assert torch.allclose(H, raw + 0.05 * torch.diagonal(raw).mean() * torch.eye(12, dtype=H.dtype))


def test_dead_inputs_get_unit_diagonal():
    acc = HessianAccumulator(3)
    acc.add_batch(torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 1.0]]))
    H = acc.hessian(0.0)
    assert H[1, 1] == 1.0


@pytest.mark.parametrize("groups", [[[3], [5], [0]], [[1, 2], [7], [9, 10, 11]]])
def test_sequential_obs_equals_one_shot_least_squares_and_costs_add_up(groups):
    W, X, acc = problem()
    H = acc.hessian()
    Wc, Hinv, total = W.clone(), inverse_hessian(H), 0.0
    for cols in groups:
        cost, Wc, Hinv = obs_remove(Wc, Hinv, cols)
        total += cost
    removed = sorted(c for g in groups for c in g)
    kept = [c for c in range(12) if c not in removed]
    optimum = least_squares(W, H, kept)
    assert torch.allclose(Wc[:, kept], optimum, rtol=1e-8, atol=1e-10)
    assert torch.all(Wc[:, removed] == 0)
    full = torch.zeros_like(W)
    full[:, kept] = optimum
    assert total == pytest.approx(error(W, full, H), rel=1e-8)


def test_greedy_choice_is_the_cheapest_true_removal():
    W, X, acc = problem(seed=3)
    H = acc.hessian()
    Hinv = inverse_hessian(H)
    true_errors = []
    for j in range(12):
        kept = [c for c in range(12) if c != j]
        full = torch.zeros_like(W)
        full[:, kept] = least_squares(W, H, kept)
        true_errors.append(error(W, full, H))
        assert obs_cost(W, Hinv, [j]) == pytest.approx(true_errors[-1], rel=1e-8)
    first = neuron_chain(W, H, {11})[11]
    removed = set(range(12)) - set(first.kept)
    assert removed == {min(range(12), key=lambda j: true_errors[j])}


@pytest.mark.parametrize("step", [1, 3])
def test_neuron_chain_visits_every_count_nested(step):
    W, X, acc = problem(d_in=20)
    H = acc.hessian()
    record = {17, 10, 9, 4, 0}
    states = neuron_chain(W, H, record, step=step)
    assert set(states) == record
    counts = sorted(record, reverse=True)
    for a, b in zip(counts, counts[1:]):
        assert set(states[b].kept) <= set(states[a].kept)
        assert states[b].cost >= states[a].cost
    for n, st in states.items():
        assert len(st.kept) == n
        if n:
            assert torch.allclose(st.weight, least_squares(W, H, st.kept), rtol=1e-6, atol=1e-9)


def test_attention_levels_are_legal_gqa_and_optimal_for_their_heads():
    head_dim, layer = 2, LayerShape(num_heads=6, num_kv_heads=3, intermediate_size=0)
    W, X, acc = problem(d_in=12, seed=5)
    H = acc.hessian()
    ladder = [[], [AttentionShape(1, 1)], [AttentionShape(1, 2), AttentionShape(2, 1)], [AttentionShape(2, 2)],
              [AttentionShape(3, 2)]]
    levels = solve_attention_levels(W.float(), H, layer, head_dim, ladder, "obs")
    assert levels[0].kept == [] and levels[-1].kept == list(range(6)) and levels[-1].weight is None
    for lv in levels[1:-1]:
        per_group = {g: [h for h in lv.kept if h // 2 == g] for g in lv.kv_heads}
        assert len({len(v) for v in per_group.values()}) == 1 and all(per_group.values())
        assert sorted(h // 2 for h in lv.kept) == sorted(g for g in lv.kv_heads for _ in per_group[g])
        cols = [h * head_dim + j for h in lv.kept for j in range(head_dim)]
        assert torch.allclose(lv.weight.double(), least_squares(W.float().double(), H, cols), rtol=1e-4, atol=1e-5)
    assert levels[2].shape in ladder[2]


def test_activation_method_keeps_original_weights():
    W, X, acc = problem(d_in=16)
    levels = solve_mlp_levels(W.float(), acc.hessian(), [0, 4, 8, 16], "activation")
    assert [len(lv.kept) for lv in levels] == [0, 4, 8, 16]
    assert all(lv.weight is None for lv in levels)
    assert set(levels[1].kept) <= set(levels[2].kept)
