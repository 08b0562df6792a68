"""The sizes nas's MIP start is assembled at, and the order a new study evaluates them in."""

from __future__ import annotations

import pytest

from evoprune.whittle.mip_start import mip_sparsities, spread_order


@pytest.mark.parametrize("sparsity_range, step, expected", [
    ((0.1, 0.75), 0.05, [round(0.1 + 0.05 * k, 6) for k in range(14)]),
    ((0.1, 0.75), 0.1, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    (None, 0.25, [0.25, 0.5, 0.75]),  # the whole space: strictly between 0 and 1
    ((0.33, 0.36), 0.05, [0.35]),
    ((0.31, 0.34), 0.05, []),
])
def test_the_mip_is_solved_at_every_step_inside_the_range(sparsity_range, step, expected):
    assert mip_sparsities(sparsity_range, step) == pytest.approx(expected)


@pytest.mark.parametrize("n", range(40))
def test_the_start_runs_coarse_to_fine_so_every_prefix_spans_the_range(n):
    order = spread_order(n)
    assert sorted(order) == list(range(n))
    if n >= 2:
        assert order[:2] == [0, n - 1]  # the largest and the smallest genotype first
    for k in range(2, n + 1):  # after k trials no gap between neighbours is much wider than an even spread's
        done = sorted(order[:k])
        widest = max(b - a for a, b in zip(done, done[1:]))
        assert widest <= 2 * (n - 1) / (k - 1) + 1, (k, done)


def test_fourteen_sizes_in_order():
    assert spread_order(14) == [0, 13, 6, 3, 9, 1, 4, 7, 11, 2, 5, 8, 10, 12]
