"""Multi-objective sub-network search with optuna, stored in SQLite so a killed search resumes.

Samplers: random search, NSGA-II (optuna's) and multi-objective local search (`local_search`).
Every dimension is a categorical distribution over its values, so every value (the top one
included) can be sampled. The budget counts completed trials. On resume, trials left RUNNING by
a killed process are marked failed and their configurations queued again, so no trial is lost and
none is counted twice; a configuration already evaluated is not evaluated again (its values are
reused). A study made for another model is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Sequence

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from ..errors import UserError
from .local_search import LocalSearchSampler
from .space import SearchSpace

log = logging.getLogger(__name__)
SAMPLERS = ("random", "nsga2", "local")
STUDY_NAME = "evoprune-nas"


def make_sampler(name: str, seed: int, population: int | None = None) -> optuna.samplers.BaseSampler:
    """An optuna sampler by name; `population`: NSGA-II's generation size (optuna's default 50)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        if population is not None and population < 2:
            raise UserError(f"the NSGA-II population must be at least 2, got {population}")
        return optuna.samplers.NSGAIISampler(seed=seed, **({"population_size": population} if population else {}))
    if name == "local":
        return LocalSearchSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def open_study(path: Path, objectives: Sequence[str], sampler: str, seed: int, fingerprint: str,
               population: int | None = None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name=STUDY_NAME, load_if_exists=True,
                                directions=["minimize"] * len(objectives), sampler=make_sampler(sampler, seed, population))
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("objectives", list(objectives))
    elif saved != fingerprint or study.user_attrs.get("objectives") != list(objectives):
        raise UserError(f"study {path} belongs to another model or other objectives; use another --out or --force")
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(stale._trial_id, state=TrialState.FAIL)
        study.enqueue_trial(stale.params)
        log.info("trial %d was interrupted; its configuration is queued again", stale.number)
    return study


def run_study(study: optuna.Study, space: SearchSpace, evaluate: Callable[[dict], Sequence[float]], budget: int,
              stop_after: int | None = None, feasible: Callable[[dict], bool] | None = None,
              max_rejected: int = 20_000) -> optuna.Study:
    """Ask, evaluate and tell until `budget` trials are complete (`stop_after`: end early, for tests).

    A configuration `feasible` rejects is told to optuna as pruned without being evaluated, so it
    costs no evaluation and does not count toward the budget.
    """
    if budget <= 0:
        raise UserError(f"the search budget must be a positive number of evaluations, got {budget}")
    distributions = {k: CategoricalDistribution(v) for k, v in space.dimensions().items()}
    done = {_key(t.params): t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    ran = rejected = 0
    while len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < budget:
        if stop_after is not None and ran >= stop_after:
            break
        trial = study.ask(distributions)
        config = dict(trial.params)
        if feasible is not None and not feasible(config):
            study.tell(trial, state=TrialState.PRUNED)
            rejected += 1
            if rejected >= max_rejected:
                raise UserError(f"{rejected} sampled configurations in a row were outside the constraint; "
                                "widen it (e.g. --params-range)")
            continue
        rejected = 0
        values = done.get(_key(config))
        if values is None:
            values = list(evaluate(config))
            done[_key(config)] = values
        study.tell(trial, values)
        ran += 1
    return study
