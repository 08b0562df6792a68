"""Multi-objective local search: better fronts than random search on a pruning-like problem, legal
and distinct configurations, deterministic for a seed (resumption after a kill: test_resume.py)."""

from __future__ import annotations

import itertools

import optuna
from optuna.trial import TrialState

from evoprune.arch.adapter import adapter_for
from evoprune.whittle.pareto import hypervolume, pareto_front
from evoprune.whittle.space import SearchSpace
from evoprune.whittle.study import make_sampler, run_study

# A pruning-like problem: six dimensions, each keeping 0/7 .. 7/7 of its units. Cost is linear in
# what is kept; the quality loss of a dimension grows with the square of what it loses, and the
# dimensions differ in importance by a factor of 400, so the front shrinks the cheap ones first.
IMPORTANCE = [8.0, 0.02, 3.0, 0.1, 1.0, 0.3]
WEIGHT = [1.0, 2.0, 0.5, 1.5, 1.0, 0.8]
LEVELS = 8
REFERENCE = [sum(IMPORTANCE) * 1.1, sum(WEIGHT) * 1.1]  # beyond the worst value of each objective


class Grid:
    """A search space without a model: what `run_study` needs of one."""

    def __init__(self, sizes: list[int]):
        self.sizes = sizes

    def dimensions(self) -> dict[str, list[int]]:
        return {f"d{i}": list(range(n)) for i, n in enumerate(self.sizes)}


def pruning_objectives(config: dict) -> list[float]:
    kept = [config[f"d{i}"] / (LEVELS - 1) for i in range(len(IMPORTANCE))]
    return [sum(a * (1 - k) ** 2 for a, k in zip(IMPORTANCE, kept)), sum(w * k for w, k in zip(WEIGHT, kept))]


def front_hypervolume(points: list) -> float:
    return hypervolume([points[i] for i in pareto_front(points)], REFERENCE)


def search(sampler: str, seed: int, budget: int, space=None, objectives=pruning_objectives) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(sampler, seed))
    return run_study(study, space or Grid([LEVELS] * len(IMPORTANCE)), objectives, budget)


def test_local_search_beats_random_search_at_the_same_budget():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = Grid([LEVELS] * len(IMPORTANCE))
    everything = sorted(pruning_objectives(dict(zip(grid.dimensions(), c)))
                        for c in itertools.product(range(LEVELS), repeat=len(IMPORTANCE)))
    optimal = [p for p, cheapest in zip(everything, itertools.accumulate((c for _, c in everything), min))
               if p[1] == cheapest]  # the true front: nothing of lower quality loss is cheaper
    best = hypervolume(optimal, REFERENCE)
    seeds, budget = range(6), 40
    local, rand = [], []
    for seed in seeds:
        studies = {name: search(name, seed, budget) for name in ("local", "random")}
        for name, hv in (("local", local), ("random", rand)):
            trials = studies[name].get_trials(states=(TrialState.COMPLETE,))
            hv.append(front_hypervolume([t.values for t in trials]))
        configs = [tuple(sorted(t.params.items())) for t in studies["local"].trials]
        assert len(set(configs)) == budget  # every evaluation spent on a new configuration
    mean_random = sum(rand) / len(rand)
    assert mean_random < 0.85 * best  # random search leaves room on this problem ...
    assert sum(local) / len(local) > 1.08 * mean_random  # ... which local search takes
    assert min(local) > mean_random
    assert max(local) <= best + 1e-9


def test_proposes_only_legal_distinct_configurations(tiny_llama):
    shape = adapter_for(tiny_llama.config).shape(tiny_llama)
    space = SearchSpace(shape, tuple(range(len(shape.layers))), per_layer=True, multiple=8)

    def objectives(config):
        spec = space.to_spec(config)  # raises on a configuration outside the space
        return [1.0 / spec.num_params(), float(spec.num_params())]

    study = search("local", 0, 30, space, objectives)
    configs = [t.params for t in study.trials]
    assert configs[0] == space.largest() and configs[1] == space.smallest()
    assert len({tuple(sorted(c.items())) for c in configs}) == 30
    dims = space.dimensions()
    assert all(set(c) == set(dims) and all(c[k] in dims[k] for k in dims) for c in configs)


def test_visits_every_configuration_of_a_small_space_before_repeating_one():
    study = search("local", 3, 9, Grid([3, 3]), lambda c: [c["d0"] - c["d1"], c["d0"] + c["d1"]])
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 9
    study = search("local", 3, 11, Grid([3, 3]), lambda c: [c["d0"] - c["d1"], c["d0"] + c["d1"]])
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 11  # then repeats are allowed


def test_deterministic_for_a_seed():
    def params(seed):
        return [t.params for t in search("local", seed, 15).trials]

    assert params(1) == params(1)
    assert params(1) != params(2)
