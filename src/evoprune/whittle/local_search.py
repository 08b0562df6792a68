"""Multi-objective local search as an optuna sampler (Pareto local search over ordered dimensions).

The first `n_startup` completed trials are fixed starting points: the largest configuration (last
value of every dimension), the smallest (first values), then random ones. After that every trial
takes a point of the current Pareto front of the completed trials and moves one or a few of its
dimensions to nearby values; dimensions are ordered lists (a categorical distribution's
choices in their given order, or an integer range). A configuration that any trial of the study
already holds is not proposed again while the front has an unvisited neighbour; when it has none,
the neighbours of every completed point, then random unvisited configurations are tried.

Everything the sampler needs is read from the study (no state of its own), and its random choices
are seeded by the seed and the number of completed or pruned trials, so a run is deterministic for
a seed and a resumed one proposes what the uninterrupted one would have. A trial pruned by a
constraint (`run_study`'s `feasible`) counts as visited, and the next proposal moves on: the next
starting point, or another random draw.

A move shifts a dimension by 1, 2, 4, ... positions of its value list (clipped at both ends, so
the first and last values are always reachable): moves of one position alone walk long lists
(MLP widths) too slowly for a budget of a hundred evaluations. The front point to move is drawn
with probability proportional to its crowding distance, so sparse stretches of the front are
filled first.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import intersection_search_space
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .pareto import crowding_distance, pareto_front

Point = tuple[int, ...]  # one index into each dimension's values


def _finished(study: Study) -> int:
    """Trials completed or pruned (a pruned one was rejected by a constraint): the next proposal must differ."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def ordered_values(distribution: BaseDistribution) -> list | None:
    """The values of an ordered dimension, or None when the distribution is not one the sampler walks."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    return None


class LocalSearchSampler(BaseSampler):
    """Pareto local search: mutate points of the current front to unvisited neighbouring configurations.

    Args:
        seed: seed of every random choice (combined with the number of completed trials).
        n_startup: completed trials before local moves begin: largest, smallest, then random.
        max_changes: most dimensions changed by one move (1 with probability 1/2, 2 with 1/4, ...).
    """

    def __init__(self, seed: int = 0, n_startup: int = 4, max_changes: int = 3):
        if n_startup < 1 or max_changes < 1:
            raise ValueError("n_startup and max_changes must be positive")
        self._seed, self._n_startup, self._max_changes = seed, n_startup, max_changes
        self._fallback = RandomSampler(seed=seed)  # for distributions that are not ordered

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    # ---- optuna's sampler interface ---------------------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = intersection_search_space(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return {name: d for name, d in space.items() if ordered_values(d) is not None and not d.single()}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        names = sorted(search_space)
        values = [ordered_values(search_space[n]) for n in names]
        positions = [{v: i for i, v in enumerate(vals)} for vals in values]

        def point_of(params: dict) -> Point | None:
            try:
                return tuple(positions[d][params[n]] for d, n in enumerate(names))
            except KeyError:
                return None

        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if point_of(t.params) is not None]
        visited = {point_of(other.params or other.system_attrs.get("fixed_params", {}))
                   for other in study.get_trials(deepcopy=False) if other.number != trial.number} - {None}
        n_done, n_finished = len(complete), _finished(study)
        if n_done < self._n_startup:
            point = point_of({n: self._startup_value(n_finished, n, values[d]) for d, n in enumerate(names)})
            if point not in visited:
                return self._config(names, values, point)
        rng = random.Random(f"{self._seed}:{n_finished}")
        signs = [-1.0 if direction == StudyDirection.MAXIMIZE else 1.0 for direction in study.directions]
        points = [point_of(t.params) for t in complete]
        scores = [[s * v for s, v in zip(signs, t.values)] for t in complete]
        front_idx = pareto_front(scores)
        weight: dict[Point, float] = {}
        for i, w in zip(front_idx, crowding_distance([scores[i] for i in front_idx])):
            weight[points[i]] = max(weight.get(points[i], 0.0), w)
        front = sorted(weight)
        return self._config(names, values, self._propose(front, [weight[p] for p in front], sorted(set(points)),
                                                         visited, values, rng))

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        values = ordered_values(param_distribution)
        if values is None:
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        n_done, n_finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))), _finished(study)
        if n_done >= self._n_startup:  # a dimension that appeared late: no front to walk for it yet
            return random.Random(f"{self._seed}:{n_finished}:{param_name}").choice(values)
        return self._startup_value(n_finished, param_name, values)

    # ---- the search -------------------------------------------------------------------------------
    def _startup_value(self, index: int, name: str, values: list) -> Any:
        if index == 0:
            return values[-1]
        if index == 1:
            return values[0]
        return random.Random(f"{self._seed}:startup{index}:{name}").choice(values)

    @staticmethod
    def _ladders(values: list[list]) -> list[list[int]]:
        """Per dimension, the strides of a move: 1, 2, 4, ... positions, up to the length of its value list."""
        ladders = []
        for v in values:
            ladder = [1]
            while ladder[-1] * 2 < len(v):
                ladder.append(ladder[-1] * 2)
            ladders.append(ladder)
        return ladders

    @staticmethod
    def _move(point: Point, dim: int, step: int, size: int) -> Point:
        moved = list(point)
        moved[dim] = min(size - 1, max(0, point[dim] + step))
        return tuple(moved)

    def _neighbours(self, point: Point, ladders: list[list[int]], values: list[list]) -> list[Point]:
        """Every configuration one move of one dimension away (any stride of its ladder, clipped at the ends)."""
        found = {self._move(point, d, sign * step, len(values[d])): None
                 for d, ladder in enumerate(ladders) for step in ladder for sign in (-1, 1)}
        found.pop(point, None)
        return list(found)

    def _random_move(self, point: Point, ladders: list[list[int]], values: list[list], rng: random.Random) -> Point:
        """`point` with one or a few random dimensions each moved by a random stride and direction."""
        weights = [0.5 ** k for k in range(1, self._max_changes + 1)]
        k = rng.choices(range(1, self._max_changes + 1), weights=weights)[0]
        movable = [d for d, v in enumerate(values) if len(v) > 1]
        for d in rng.sample(movable, min(k, len(movable))):
            step = rng.choice(ladders[d]) * rng.choice((-1, 1))
            moved = self._move(point, d, step, len(values[d]))
            point = moved if moved != point else self._move(point, d, -step, len(values[d]))
        return point

    def _propose(self, front: list[Point], weights: list[float], evaluated: list[Point], visited: set[Point],
                 values: list[list], rng: random.Random) -> Point:
        ladders = self._ladders(values)
        open_points = [(p, u, w) for p, w in zip(front, weights)
                       if (u := [q for q in self._neighbours(p, ladders, values) if q not in visited])]
        if open_points:
            point, unvisited, _ = rng.choices(open_points, weights=[w for _, _, w in open_points])[0]
            moved = self._random_move(point, ladders, values, rng)
            return moved if moved not in visited and moved != point else rng.choice(unvisited)
        unvisited = sorted({q for p in evaluated for q in self._neighbours(p, ladders, values) if q not in visited})
        if unvisited:
            return rng.choice(unvisited)
        draws = [tuple(rng.randrange(len(v)) for v in values) for _ in range(1000)]
        return next((q for q in draws if q not in visited), draws[0])

    @staticmethod
    def _config(names: Sequence[str], values: list[list], point: Point) -> dict[str, Any]:
        return {n: values[d][point[d]] for d, n in enumerate(names)}
