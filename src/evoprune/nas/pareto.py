"""Pareto front, hypervolume and knee point of a set of points, every objective minimised."""

from __future__ import annotations

import math
from typing import Sequence

Point = Sequence[float]


def dominates(a: Point, b: Point) -> bool:
    """a is no worse than b in every objective and better in at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, in input order (duplicates of a front point all kept)."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """Volume dominated by `points` and bounded by `reference` (2 or 3 objectives, exact).

    Points not strictly better than the reference in every objective contribute nothing.
    """
    inside = [tuple(p) for p in points if all(x < r for x, r in zip(p, reference))]
    if not inside:
        return 0.0
    if len(reference) == 2:
        front = sorted(inside[i] for i in pareto_front(inside))
        volume, prev_y = 0.0, reference[1]
        for x, y in front:
            if y < prev_y:
                volume += (reference[0] - x) * (prev_y - y)
                prev_y = y
        return volume
    if len(reference) == 3:
        # slice along the third objective: between consecutive z levels the dominated area is constant
        levels = sorted({p[2] for p in inside})
        volume = 0.0
        for k, z in enumerate(levels):
            top = levels[k + 1] if k + 1 < len(levels) else reference[2]
            area = hypervolume([p[:2] for p in inside if p[2] <= z], reference[:2])
            volume += area * (top - z)
        return volume
    raise ValueError(f"hypervolume is implemented for 2 or 3 objectives, got {len(reference)}")


def knee_point(points: Sequence[Point]) -> int:
    """Index of the front point closest (after min-max normalisation) to the ideal point."""
    front = pareto_front(points)
    dims = len(points[front[0]])
    low = [min(points[i][d] for i in front) for d in range(dims)]
    high = [max(points[i][d] for i in front) for d in range(dims)]

    def distance(i: int) -> float:
        return math.sqrt(sum(((points[i][d] - low[d]) / ((high[d] - low[d]) or 1.0)) ** 2 for d in range(dims)))

    return min(front, key=lambda i: (distance(i), i))
