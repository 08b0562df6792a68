"""Grouped OBS: Hessians, costs equal to true error increases, sequential removal equal to
one-shot least squares, and the neuron / GQA-head chains (legal, nested, greedy)."""

from __future__ import annotations

import random

import pytest
import torch

from evoprune.arch.shape import LayerShape
from evoprune.obs import solver as obs
from evoprune.obs.levels import AttentionShape
from evoprune.obs.module_levels import solve_attention_levels, solve_mlp_levels
from evoprune.obs.solver import (HessianAccumulator, ObsState, gqa_head_chain, head_columns, inverse_hessian,
                                neuron_chain, obs_cost, obs_remove)

F64 = torch.float64


def problem(d_out=6, d_in=12, n=300, seed=0):
    """Correlated calibration inputs X (n, d_in), weights W (d_out, d_in), and their accumulator."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=F64) @ torch.randn(d_in, d_in, generator=g, dtype=F64)
    W = torch.randn(d_out, d_in, generator=g, dtype=F64)
    acc = HessianAccumulator(d_in)
    for chunk in X.split(70):
        acc.add_batch(chunk)
    return W, X, acc


def least_squares(W, H, kept):
    """One-shot optimum W'_:K = W H_:K (H_KK)⁻¹ for kept columns K."""
    kept = torch.as_tensor(kept, dtype=torch.long)
    return W @ H[:, kept] @ torch.linalg.inv(H[kept][:, kept])


def padded(W_kept, kept, d_in):
    full = torch.zeros(W_kept.shape[0], d_in, dtype=W_kept.dtype)
    full[:, kept] = W_kept
    return full


def error(W, W_new, H):
    """tr(D H Dᵀ), D = W − W' (W' full-size, removed columns zero)."""
    D = W - W_new
    return float(torch.einsum("oi,ij,oj->", D, H, D))


def ls_error(W, H, kept):
    return error(W, padded(least_squares(W, H, kept), kept, W.shape[1]), H)


# --- Hessian ---------------------------------------------------------------------------------

def test_accumulated_hessian_equals_concatenation():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 7, 5, generator=g), torch.randn(13, 5, generator=g), torch.randn(0, 5),
               torch.randn(1, 1, 4, 5, generator=g)]
    acc = HessianAccumulator(5)
    for x in batches:
        acc.add_batch(x)
    X = torch.cat([x.reshape(-1, 5) for x in batches]).double()
    assert acc.n == 31 == len(X)
    assert acc.H.dtype == F64
    assert torch.allclose(acc.H, 2 * X.T @ X / len(X), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        acc.add_batch(torch.randn(3, 4))


def test_damping_is_a_fraction_of_the_mean_diagonal():
    W, X, acc = problem()
    raw = 2 * X.T @ X / len(X)
    H = acc.hessian(0.05)
    assert torch.allclose(H, raw + 0.05 * torch.diagonal(raw).mean() * torch.eye(12, dtype=F64))
    assert torch.allclose(acc.H, raw)  # hessian() returns a new tensor


def test_dead_inputs_get_unit_diagonal_and_are_removed_first_at_zero_cost():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(200, 6, generator=g, dtype=F64) @ torch.randn(6, 6, generator=g, dtype=F64)
    X[:, 2] = 0
    acc = HessianAccumulator(6)
    acc.add_batch(X)
    assert acc.dead.tolist() == [False, False, True, False, False, False]
    raw = 2 * X.T @ X / len(X)
    fixed = raw.clone()
    fixed[2, 2] = 1.0
    assert torch.allclose(acc.hessian(0.0), fixed, rtol=1e-12, atol=1e-12) and acc.hessian(0.0)[2, 2] == 1.0
    assert torch.allclose(acc.hessian(0.1), fixed + 0.1 * torch.diagonal(fixed).mean() * torch.eye(6, dtype=F64))

    H = acc.hessian()
    W = torch.randn(4, 6, generator=g, dtype=F64) * 10  # the dead column has a large weight
    first = neuron_chain(W, H, {5}, dead=acc.dead)[5]
    assert first.kept == [0, 1, 3, 4, 5] and first.cost == 0.0
    assert torch.allclose(first.weight, W[:, first.kept])  # nothing to compensate
    assert neuron_chain(W, H, {5})[5].cost > 0  # without the mask the dead weights cost something


def test_inverse_hessian_and_extra_damping_fallback():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(1100, 1200, generator=g, dtype=F64)  # larger than one inverse block
    H = A @ A.T / 1200 + 0.1 * torch.eye(1100, dtype=F64)
    Hinv = inverse_hessian(H)
    assert torch.equal(Hinv, Hinv.T)
    assert torch.allclose(Hinv, torch.linalg.inv(H), rtol=1e-9, atol=1e-12)

    singular = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64)  # Cholesky fails on the zero pivot
    expected = torch.linalg.inv(singular + 0.1 * torch.eye(2, dtype=F64))
    assert torch.allclose(inverse_hessian(singular, percdamp=0.1), expected)
    with pytest.raises(ValueError):
        inverse_hessian(-torch.eye(3, dtype=F64))


# --- the one-step kernel ---------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_sequential_obs_equals_one_shot_least_squares(seed):
    rng = random.Random(seed)
    W, X, acc = problem(seed=seed)
    H = acc.hessian()
    removed = rng.sample(range(12), rng.randint(1, 11))
    groups, rest = [], list(removed)
    while rest:  # a random partition into singletons and groups
        b = rng.randint(1, min(3, len(rest)))
        groups.append(rest[:b])
        rest = rest[b:]
    Wc, Hinv, total = W.clone(), inverse_hessian(H), 0.0
    for cols in groups:
        W_before, Hinv_before = Wc.clone(), Hinv.clone()
        cost, Wc, Hinv = obs_remove(Wc, Hinv, cols)
        assert cost == pytest.approx(obs_cost(W_before, Hinv_before, cols), rel=1e-12)
        total += cost
    kept = sorted(set(range(12)) - set(removed))
    k = torch.tensor(kept)
    assert torch.allclose(Wc[:, k], least_squares(W, H, kept), rtol=1e-9, atol=1e-11)
    assert torch.all(Wc[:, removed] == 0)
    assert torch.allclose(Hinv[k][:, k], torch.linalg.inv(H[k][:, k]), rtol=1e-9, atol=1e-11)
    assert torch.all(Hinv[removed] == 0) and torch.all(Hinv[:, removed] == 0)
    assert total == pytest.approx(ls_error(W, H, kept), rel=1e-9)


def test_obs_remove_leaves_inputs_alone_and_rejects_removed_columns():
    W, X, acc = problem()
    Hinv = inverse_hessian(acc.hessian())
    W0, Hinv0 = W.clone(), Hinv.clone()
    _, W1, Hinv1 = obs_remove(W, Hinv, [4, 7])
    assert torch.equal(W, W0) and torch.equal(Hinv, Hinv0)
    for bad in ([7], [1, 4], [], [2, 2]):
        with pytest.raises(ValueError):
            obs_remove(W1, Hinv1, bad)


def test_cost_is_the_true_output_error_increase():
    """Without damping, cost = (2/n)·‖X (W − W')ᵀ‖² with W' the brute-force least-squares refit."""
    W, X, acc = problem(seed=5)
    n = len(X)
    H = acc.hessian(0.0)
    Hinv = inverse_hessian(H)

    def true_increase(removed):
        kept = [c for c in range(12) if c not in removed]
        refit = torch.linalg.lstsq(X[:, kept], X @ W.T).solution.T  # argmin ‖X Wᵀ − X_:K W'ᵀ‖
        return float((X @ (W - padded(refit, kept, 12)).T).pow(2).sum())

    increases = [true_increase([j]) for j in range(12)]
    for j in range(12):
        assert obs_cost(W, Hinv, [j]) == pytest.approx(2 / n * increases[j], rel=1e-8)
    assert obs_cost(W, Hinv, [0, 5, 6]) == pytest.approx(2 / n * true_increase([0, 5, 6]), rel=1e-8)

    # The greedy first removal is the column of smallest true increase.
    first = neuron_chain(W, H, {11})[11]
    assert set(range(12)) - set(first.kept) == {min(range(12), key=increases.__getitem__)}
    assert first.cost == pytest.approx(2 / n * min(increases), rel=1e-8)

    # With damping λ the cost also counts λ‖W − W'‖², W' the refit for the dampened H.
    Hd = acc.hessian(0.02)
    lam = 0.02 * float(torch.diagonal(H).mean())
    kept = [c for c in range(12) if c != 3]
    D = W - padded(least_squares(W, Hd, kept), kept, 12)
    expected = 2 / n * float((X @ D.T).pow(2).sum()) + lam * float(D.pow(2).sum())
    assert obs_cost(W, inverse_hessian(Hd), [3]) == pytest.approx(expected, rel=1e-8)


# --- neuron chain ----------------------------------------------------------------------------

@pytest.mark.parametrize("step", [1, 3, 7])
def test_neuron_chain_visits_every_count_nested_and_optimal(step):
    W, X, acc = problem(d_in=20)
    H = acc.hessian()
    record = {20, 17, 10, 9, 4, 1, 0}
    states = neuron_chain(W, H, record, step=step)
    assert set(states) == record
    assert torch.equal(states[20].weight, W) and states[20].cost == 0.0 and states[20].kept == list(range(20))
    counts = sorted(record, reverse=True)
    for a, b in zip(counts, counts[1:]):
        assert set(states[b].kept) < set(states[a].kept)
        assert states[b].cost >= states[a].cost
    for n, st in states.items():
        assert len(st.kept) == n and st.kept == sorted(st.kept)
        assert st.weight.shape == (6, n) and st.weight.dtype == F64
        assert st.cost == pytest.approx(ls_error(W, H, st.kept), rel=1e-9, abs=1e-12)
        if n:
            assert torch.allclose(st.weight, least_squares(W, H, st.kept), rtol=1e-8, atol=1e-10)
    assert states[0].cost == pytest.approx(float(torch.einsum("oi,ij,oj->", W, H, W)), rel=1e-9)


def test_blocked_inverse_and_lower_triangular_updates_agree_with_unblocked(monkeypatch):
    """Blocks smaller than the matrices (as for real layers): same states as one block."""
    W, X, acc = problem(d_in=20, seed=8)
    H = acc.hessian()
    reference = neuron_chain(W, H, {13, 5}, step=2)
    heads = gqa_head_chain(W, H, 2, 5, 2)
    monkeypatch.setattr(obs, "_BLOCK", 3)
    assert torch.allclose(inverse_hessian(H), torch.linalg.inv(H), rtol=1e-10, atol=1e-12)
    blocked = neuron_chain(W, H, {13, 5}, step=2)
    for n in (13, 5):
        assert blocked[n].kept == reference[n].kept
        assert torch.allclose(blocked[n].weight, least_squares(W, H, blocked[n].kept), rtol=1e-9, atol=1e-11)
    assert [st.kept for st in gqa_head_chain(W, H, 2, 5, 2)] == [st.kept for st in heads]


def test_neuron_chain_step_removes_the_individually_cheapest_as_one_group():
    W, X, acc = problem(d_in=15, seed=7)
    H = acc.hessian()
    Hinv = torch.linalg.inv(H)
    scores = W.pow(2).sum(0) / torch.diagonal(Hinv)
    st = neuron_chain(W, H, {11}, step=4)[11]
    assert set(range(15)) - set(st.kept) == set(torch.argsort(scores)[:4].tolist())
    assert st.cost == pytest.approx(obs_cost(W, Hinv, sorted(set(range(15)) - set(st.kept))), rel=1e-9)


def test_single_column_chain_is_greedy_on_the_true_error():
    W, X, acc = problem(d_in=9, seed=11)
    H = acc.hessian()
    states = neuron_chain(W, H)  # record=None: every count
    assert set(states) == set(range(10))
    for n in range(9, 0, -1):
        before = states[n].kept
        removed = set(before) - set(states[n - 1].kept)
        increases = {j: ls_error(W, H, [c for c in before if c != j]) for j in before}
        best = min(increases.values())
        assert len(removed) == 1 and increases[removed.pop()] == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_neuron_chain_every_visited_count_with_steps():
    W, X, acc = problem(d_in=11)
    states = neuron_chain(W, acc.hessian(), None, step=3)
    assert sorted(states, reverse=True) == [11, 8, 5, 2, 0]


def test_neuron_chain_keeps_the_input_dtype_and_checks_arguments():
    W, X, acc = problem(d_in=10)
    H = acc.hessian()
    exact = neuron_chain(W, H, {6, 3})
    for dtype in (torch.float32, torch.bfloat16):
        states = neuron_chain(W.to(dtype), H.float(), {6, 3})
        assert all(st.weight.dtype == dtype for st in states.values())
        assert torch.allclose(states[6].weight.double(), least_squares(W.to(dtype).double(), H, states[6].kept),
                              rtol=1e-2, atol=1e-2)
    assert exact[3].kept == neuron_chain(W.float(), H.float(), {3})[3].kept
    with pytest.raises(ValueError):
        neuron_chain(W, H, {11})
    with pytest.raises(ValueError):
        neuron_chain(W, H, {-1})
    with pytest.raises(ValueError):
        neuron_chain(W, H, {3}, step=0)
    assert neuron_chain(W, H, set()) == {}


# --- GQA head chain --------------------------------------------------------------------------

KV, REP, HD = 3, 3, 2  # 9 query heads of width 2 over 3 KV groups: 18 o_proj columns


def check_gqa_chain(states: list[ObsState], W, H, kv=KV, rep=REP, hd=HD):
    num_heads = kv * rep
    first, last = states[0], states[-1]
    assert first.kept == list(range(num_heads)) and first.kv_heads == list(range(kv))
    assert torch.equal(first.weight, W) and first.cost == 0.0
    assert last.kept == [] and last.kv_heads == [] and last.weight.shape == (W.shape[0], 0)
    assert last.cost == pytest.approx(float(torch.einsum("oi,ij,oj->", W, H, W)), rel=1e-9)
    for prev, st in zip(states, states[1:]):
        per_group = {q: [h for h in st.kept if h // rep == q] for q in st.kv_heads}
        assert sorted(h // rep for h in st.kept) == sorted(q for q, hs in per_group.items() for _ in hs)
        assert len({len(hs) for hs in per_group.values()}) <= 1 and all(per_group.values())
        assert st.kept == sorted(st.kept) and st.kv_heads == sorted(st.kv_heads)
        assert set(st.kept) < set(prev.kept) and set(st.kv_heads) <= set(prev.kv_heads)
        assert st.cost >= prev.cost
        cols = head_columns(st.kept, hd)
        assert st.weight.shape == (W.shape[0], len(cols))
        if cols:
            assert torch.allclose(st.weight, least_squares(W, H, cols), rtol=1e-8, atol=1e-10)
        assert st.cost == pytest.approx(ls_error(W, H, cols), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_gqa_chain_is_legal_nested_and_optimal(seed):
    W, X, acc = problem(d_out=5, d_in=KV * REP * HD, seed=seed)
    H = acc.hessian()
    states = gqa_head_chain(W, H, KV, REP, HD)
    check_gqa_chain(states, W, H)


@pytest.mark.parametrize("params", [(None, None), (1, 0), (1, 10)])
def test_gqa_chain_takes_the_cheapest_move_per_parameter(params):
    """Brute force: every step is the legal move of least (true error increase) / (parameters saved)."""
    W, X, acc = problem(d_out=5, d_in=KV * REP * HD, seed=4)
    H = acc.hessian()
    per_head, per_kv = params
    states = gqa_head_chain(W, H, KV, REP, HD, per_head, per_kv)
    check_gqa_chain(states, W, H)
    per_head = 2 * 5 * HD if per_head is None else per_head
    per_kv = 2 * 5 * HD if per_kv is None else per_kv
    kinds = set()
    for prev, st in zip(states, states[1:]):
        base = ls_error(W, H, head_columns(prev.kept, HD))
        groups = {q: [h for h in prev.kept if h // REP == q] for q in prev.kv_heads}
        s = len(next(iter(groups.values())))

        def increase(removed_heads):
            return ls_error(W, H, head_columns([h for h in prev.kept if h not in removed_heads], HD)) - base

        moves = {tuple(hs): increase(hs) / (s * per_head + per_kv) for hs in groups.values()}
        if s > 1:
            row = tuple(min(hs, key=lambda h: (increase([h]), h)) for hs in groups.values())
            moves[row] = increase(row) / (len(groups) * per_head)
        taken = tuple(sorted(set(prev.kept) - set(st.kept)))
        assert taken in moves
        assert moves[taken] == pytest.approx(min(moves.values()), rel=1e-9, abs=1e-15)
        kinds.add("group" if set(st.kv_heads) < set(prev.kv_heads) else "row")
    if params == (1, 0):
        assert kinds == {"group", "row"}


def test_gqa_chain_breaks_ties_by_lowest_index():
    W = torch.zeros(4, KV * REP * HD, dtype=F64)  # every move costs nothing
    H = torch.eye(KV * REP * HD, dtype=F64)
    states = gqa_head_chain(W, H, KV, REP, HD)
    assert [st.kv_heads for st in states] == [[0, 1, 2], [1, 2], [2], []]
    assert [st.kept for st in states] == [list(range(9)), list(range(3, 9)), [6, 7, 8], []]
    again = gqa_head_chain(W, H, KV, REP, HD)
    assert [st.kept for st in again] == [st.kept for st in states]


def test_gqa_chain_multi_head_attention_and_shape_check():
    W, X, acc = problem(d_out=5, d_in=4 * 3, seed=9)
    H = acc.hessian()
    states = gqa_head_chain(W, H, num_kv_heads=4, heads_per_group=1, head_dim=3)  # MHA: one head per group
    assert len(states) == 5 and all(st.kept == st.kv_heads for st in states)
    check_gqa_chain(states, W, H, kv=4, rep=1, hd=3)
    with pytest.raises(ValueError):
        gqa_head_chain(W, H, num_kv_heads=2, heads_per_group=2, head_dim=2)


# --- module_levels on top of the kernel (kept here until it has a test file of its own) --------

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
        cols = head_columns(lv.kept, head_dim)
        assert torch.allclose(lv.weight.double(), least_squares(W.float().double(), H, cols), rtol=1e-4, atol=1e-5)
    assert levels[2].shape in ladder[2]


def test_activation_method_keeps_original_weights():
    W, X, acc = problem(d_in=16)
    levels = solve_mlp_levels(W.float(), acc.hessian(), [0, 4, 8, 16], "activation")
    assert [len(lv.kept) for lv in levels] == [0, 4, 8, 16]
    assert all(lv.weight is None for lv in levels)
    assert set(levels[1].kept) <= set(levels[2].kept)
