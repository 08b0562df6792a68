"""Pareto front, hypervolume, crowding distance and knee point of a set of points, every objective minimised."""

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


def crowding_distance(scores: Sequence[Point]) -> list[float]:
    """NSGA-II's crowding distance of each point of a front, min-max normalised per objective; the
    extremes of an objective get the largest finite distance of the front (1 if there is none)."""
    n = len(scores)
    if n <= 2:
        return [1.0] * n
    distance = [0.0] * n
    extreme = [False] * n
    for m in range(len(scores[0])):
        order = sorted(range(n), key=lambda i: (scores[i][m], i))
        span = (scores[order[-1]][m] - scores[order[0]][m]) or 1.0
        extreme[order[0]] = extreme[order[-1]] = True
        for a, b, c in zip(order, order[1:], order[2:]):
            distance[b] += (scores[c][m] - scores[a][m]) / span
    top = max((d for d, e in zip(distance, extreme) if not e), default=0.0) or 1.0
    return [top if e else d for d, e in zip(distance, extreme)]


def knee_point(points: Sequence[Point]) -> int:
    """Index of the front point closest (after min-max normalisation) to the ideal point."""
    front = pareto_front(points)
    dims = len(points[front[0]])
    low = [min(points[i][d] for i in front) for d in range(dims)]
    high = [max(points[i][d] for i in front) for d in range(dims)]

    def distance(i: int) -> float:
        return math.sqrt(sum(((points[i][d] - low[d]) / ((high[d] - low[d]) or 1.0)) ** 2 for d in range(dims)))

    return min(front, key=lambda i: (distance(i), i))
