"""Pareto front, hypervolume and knee on points whose answers can be worked out by hand."""

from __future__ import annotations

import itertools
import random

import pytest

from evoprune.whittle.pareto import crowding_distance, dominates, hypervolume, knee_point, pareto_front


def test_front_of_a_staircase():
    points = [(1, 5), (2, 3), (3, 4), (4, 1), (5, 5), (2, 3)]
    assert pareto_front(points) == [0, 1, 3, 5]
    assert dominates((2, 3), (3, 4)) and not dominates((2, 3), (2, 3))


def test_hypervolume_2d_by_hand():
    # staircase (1,3), (2,2), (3,1) against reference (4,4): 3*1 + 2*1 + 1*1 = 6
    assert hypervolume([(1, 3), (2, 2), (3, 1), (3, 3)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(5, 1)], (4, 4)) == 0.0


def test_hypervolume_3d_matches_a_grid_count():
    rng = random.Random(0)
    points = [tuple(rng.randint(0, 4) for _ in range(3)) for _ in range(6)]
    reference = (5, 5, 5)
    cells = sum(1 for c in itertools.product(range(5), repeat=3)
                if any(all(p[d] <= c[d] for d in range(3)) for p in points))
    assert hypervolume(points, reference) == pytest.approx(cells)


def test_knee_is_the_balanced_point():
    assert knee_point([(0, 10), (1, 1), (10, 0), (5, 5)]) == 1


def test_crowding_distance_by_hand():
    # spans 4 and 5; (1,2): 3/4 + 4/5; (3,1): 3/4 + 2/5; the extremes get the largest of those
    assert crowding_distance([(0, 5), (1, 2), (3, 1), (4, 0)]) == pytest.approx([1.55, 1.55, 1.15, 1.55])
    assert crowding_distance([(0, 1), (1, 0)]) == [1.0, 1.0]
