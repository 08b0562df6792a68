"""Multi-objective sub-network search with optuna, stored in SQLite so a killed search resumes.

Samplers: random search, NSGA-II (optuna's) and multi-objective local search (`local_search`).
Every dimension is a categorical distribution over its values, so every value (the top one
included) can be sampled. The budget counts completed trials; the start (the
database's MIP assemblies or uniform genotypes) is a new study's first trials, whatever the sampler.

A killed search resumes exactly: the random and NSGA-II samplers draw each trial from the seed
and the trial's place in the study (`resumable_samplers`), the local search from the seed and the
study's history, and a trial the kill left running is finished under its own number. The
resumed study holds the trials, values and front the uninterrupted one would. A configuration
already evaluated is not evaluated again (its values are reused). A study made for another
model, other objectives or another search space is refused.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from pathlib import Path
from typing import Callable, Sequence

import optuna
import sqlalchemy.exc
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from ..config import NAS_SAMPLERS
from ..errors import UserError
from .level_space import LevelSpace
from .local_search import LocalSearchSampler
from .resumable_samplers import PositionSeededSampler, TrialOrderNSGAIISampler
from .space import SearchSpace

log = logging.getLogger(__name__)
SAMPLERS = NAS_SAMPLERS  # local, nsga2, random (nas.sampler)
STUDY_NAME = "evoprune-nas"


def make_sampler(name: str, seed: int, population: int | None = None) -> optuna.samplers.BaseSampler:
    """An optuna sampler by name; `population`: NSGA-II's generation size (optuna's default 50)."""
    if name == "random":
        return PositionSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed)
    if name == "nsga2":
        if population is not None and population < 2:
            raise UserError(f"the NSGA-II population must be at least 2, got {population}")
        size = {"population_size": population} if population else {}
        return PositionSeededSampler(lambda s: TrialOrderNSGAIISampler(seed=s, **size), seed)
    if name == "local":
        return LocalSearchSampler(seed=seed)  # already a function of the seed and the study's history
    raise UserError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def storage_url(path: Path) -> str:
    """The SQLAlchemy URL of SQLite database `path`, whatever characters (?, #, %) the path holds.

    The path is a percent-encoded SQLite URI filename, encoded once more because SQLAlchemy
    decodes the database part of a URL before handing it to SQLite.
    """
    uri_path = urllib.parse.quote(str(Path(path).absolute()))
    return f"sqlite:///file:{urllib.parse.quote(uri_path)}?uri=true"


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def open_study(path: Path, objectives: Sequence[str], sampler: str, seed: int, fingerprint: str,
               population: int | None = None) -> optuna.Study:
    """Create the study in `path`, or load it to resume; a corrupt file is a UserError naming it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = make_sampler(sampler, seed, population)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(storage=storage_url(path), study_name=STUDY_NAME, load_if_exists=True,
                                    directions=["minimize"] * len(objectives), sampler=chosen)
        saved = study.user_attrs.get("fingerprint")
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise UserError(f"{path} is not a readable optuna study ({reason}); pass --force to start the run over") \
            from None
    if saved is None:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("objectives", list(objectives))
    elif saved != fingerprint or study.user_attrs.get("objectives") != list(objectives):
        raise UserError(f"study {path} belongs to another model or other objectives; use another --out or --force")
    return study


def _check_dimensions(study: optuna.Study, dimensions: dict[str, list]) -> None:
    saved = study.user_attrs.get("dimensions")
    if saved is None:
        study.set_user_attr("dimensions", dimensions)
    elif saved != dimensions:
        changed = sorted(k for k in set(saved) | set(dimensions) if saved.get(k) != dimensions.get(k))
        raise UserError(f"the study's trials were drawn from another search space (dimensions {', '.join(changed)} "
                        "differ: another --multiple?); use the same settings to resume, or --force to start over")


def _interrupted(study: optuna.Study, distributions: dict[str, CategoricalDistribution]) -> list[FrozenTrial]:
    """Trials a killed process left running, in order, to finish. A starting point (an enqueued configuration)
    killed while optuna was writing its parameters gets the rest of them from its fixed configuration; a draw
    killed before all its parameters were written is failed (the next trial is drawn in its place)."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    names, unfinished = set(distributions), []
    for trial in stale:
        fixed = trial.system_attrs.get("fixed_params") or {}
        missing = names - set(trial.params)
        if missing and names <= set(fixed):
            for name in sorted(missing):  # optuna writes an enqueued trial's parameters one storage call at a time
                dist = distributions[name]
                study._storage.set_trial_param(trial._trial_id, name, dist.to_internal_repr(fixed[name]), dist)
            unfinished.append(study._storage.get_trial(trial._trial_id))
        elif missing:
            study.tell(trial.number, state=TrialState.FAIL)
            log.info("trial %d was interrupted before its configuration was drawn; it is dropped", trial.number)
        else:
            unfinished.append(trial)
    return unfinished


def run_study(study: optuna.Study, space: SearchSpace | LevelSpace, evaluate: Callable[[dict], Sequence[float]],
              budget: int, stop_after: int | None = None, feasible: Callable[[dict], bool] | None = None,
              max_rejected: int = 20_000, progress: bool = False, start: Sequence[dict] = ()) -> optuna.Study:
    """Ask, evaluate and tell until `budget` trials are complete (`stop_after`: end after that many evaluations).

    `start`: configurations a new study evaluates first, whatever the sampler (enqueued once, so they are in
    the study from then on, and a resumed study goes on where it was).

    The caller must be the study's only writer (`nas` holds the run directory's lock): a trial
    found running was left by a killed process, and is evaluated and finished first. A
    configuration `feasible` rejects is told to optuna as pruned without being evaluated, so it
    costs no evaluation and does not count toward the budget.
    """
    if budget <= 0:
        raise UserError(f"the search budget must be a positive number of evaluations, got {budget}")
    dimensions = space.dimensions()
    _check_dimensions(study, dimensions)
    if not study.get_trials(deepcopy=False):
        for config in start:
            study.enqueue_trial(config)
    distributions = {k: CategoricalDistribution(v) for k, v in dimensions.items()}
    interrupted = _interrupted(study, distributions)
    done_trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = {_key(t.params): t.values for t in done_trials}
    ran = rejected = 0
    completed = len(done_trials)
    with tqdm(total=budget, initial=min(completed, budget), desc="search trials", disable=not progress) as bar:
        while completed < budget:
            if stop_after is not None and ran >= stop_after:
                break
            if interrupted:
                stale = interrupted.pop(0)
                trial, config = stale.number, dict(stale.params)
                log.info("trial %d was interrupted; it is evaluated again", trial)
            else:
                asked = study.ask(distributions)
                trial, config = asked, dict(asked.params)
            if feasible is not None and not feasible(config):
                study.tell(trial, state=TrialState.PRUNED)
                rejected += 1
                if rejected >= max_rejected:
                    raise UserError(f"{rejected} sampled configurations in a row were outside the constraint; "
                                    "widen it (e.g. --sparsity-range)")
                continue
            rejected = 0
            values = done.get(_key(config))
            if values is None:
                values = list(evaluate(config))
                done[_key(config)] = values
            study.tell(trial, values)
            ran += 1
            completed += 1
            bar.update(1)
            bar.set_postfix_str(", ".join(f"{v:.4g}" for v in values))
    return study
