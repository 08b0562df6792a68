"""The evolutionary search loop (DarwinLM): mutate the parent, select among offspring, repeat.

The search starts from the uniform genotype (DarwinLM) or a given one (e.g. the MIP assembly of
replace-one scores, `levels/assemble.py`). The first parent is that start, or the winner of one selection
among the start, the uniform genotype and `init_samples` random genotypes inside the budget (random
walks of level switches from the start, from a few steps to `init_walk`). Each generation makes
`offspring` level-switch mutations of the parent; the parent competes with them (elitism) through
the selection stages; the winner becomes the next parent. The state is written atomically after
every generation, so a killed search resumes exactly where it stopped and reaches the same result
as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import write_text
from ..levels.budget import Budget, CostTable, uniform_genotype
from .distributed_fitness import agreed
from .fitness import CandidateEvaluator, Stage, select
from ..levels.genotype import Genotype
from .mutation import mutate, random_genotype
from ..training.rng import rng_state
from .state import SearchState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvolutionSettings:
    offspring: int
    generations: int
    seed: int = 0
    trade: bool = True
    init_samples: int = 0  # random genotypes competing with the uniform one for the first parent
    init_walk: int = 100  # level-switch mutations of the farthest random genotype (the k-th of n: k/n of it)
    mutation_scales: tuple[int, ...] = (1,)  # offspring k makes scales[k % len] times DarwinLM's switches
    max_seconds: float | None = None  # no new generation once the search has taken this long in total


@dataclass
class SearchResult:
    best: Genotype
    state: SearchState

    def finished(self, settings: EvolutionSettings) -> bool:
        """All generations done, or the time limit reached."""
        return self.state.generation >= settings.generations or out_of_time(self.state, settings)


def out_of_time(state: SearchState, settings: EvolutionSettings) -> bool:
    return agreed(settings.max_seconds is not None and state.seconds >= settings.max_seconds)


def evolve(evaluator: CandidateEvaluator, table: CostTable, budget: Budget, stages: list[Stage],
           settings: EvolutionSettings, state_dir: Path, config: dict, progress: bool = True,
           stop_after: int | None = None, start: Genotype | None = None) -> SearchResult:
    """Run (or resume) the search in `state_dir`.

    Args:
        start: the genotype to start from instead of the uniform one (which then competes with it).
        config: the search-relevant settings; stored in the state and compared on resume.
        stop_after: end after this many generations in this call (tests use it to simulate a kill).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file = state_dir / "state.json"
    if state_file.exists():
        state = SearchState.load(state_file, config)
        log.info("resuming search at generation %d", state.generation)
    else:
        state = _first_parent(evaluator, table, budget, stages, settings, config, start)
        _save(state, state_dir)
    rng = state.restore_rng()
    bar = tqdm(total=settings.generations, initial=state.generation, desc="search", disable=not progress)
    done_here = 0
    while (state.generation < settings.generations and (stop_after is None or done_here < stop_after)
           and not out_of_time(state, settings)):
        started = time.time()
        scales = settings.mutation_scales
        children = [mutate(state.parent, table, budget, rng, settings.trade, scale=scales[k % len(scales)])
                    for k in range(settings.offspring)]
        _select_parent(state, [state.parent] + children, stages, evaluator, table,
                       seed=settings.seed * 100003 + state.generation + 1)
        state.generation += 1
        state.rng = rng_state(rng)
        state.seconds += time.time() - started
        state.history[-1].update(generation=state.generation, seconds=round(state.seconds, 2))
        _save(state, state_dir)
        bar.update(1)
        bar.set_postfix(kl=f"{state.history[-1]['fitness'][-1]:.4f}")
        done_here += 1
    bar.close()
    return SearchResult(state.parent, state)


def _first_parent(evaluator: CandidateEvaluator, table: CostTable, budget: Budget, stages: list[Stage],
                  settings: EvolutionSettings, config: dict, start: Genotype | None = None) -> SearchState:
    rng = random.Random(settings.seed)
    uniform = uniform_genotype(table, budget)
    start = uniform if start is None else start
    state = SearchState(config, 0, start, [])
    if settings.init_samples or start != uniform:
        started = time.time()
        n = settings.init_samples
        walks = [max(1, round(settings.init_walk * (k + 1) / n)) for k in range(n)]  # near and far from the start
        pool = [start] + ([uniform] if start != uniform else [])
        pool += [random_genotype(table, budget, rng, start, w, settings.trade) for w in walks]
        _select_parent(state, pool, stages, evaluator, table, seed=settings.seed * 100003)
        state.seconds = time.time() - started
        state.history[-1].update(generation=0, seconds=round(state.seconds, 2))
    state.rng = rng_state(rng)
    return state


def _select_parent(state: SearchState, pool: list[Genotype], stages: list[Stage], evaluator: CandidateEvaluator,
                   table: CostTable, seed: int) -> None:
    before = evaluator.evaluations
    winner, scores = select(pool, stages, evaluator, seed=seed)
    state.parent = winner
    state.evaluations += evaluator.evaluations - before
    state.history.append({"fitness": [s[winner] for s in scores], "best_first_stage": min(scores[0].values()),
                          "first_stage": sorted(scores[0].values()), "cost": table.cost(winner),
                          "parent": winner.to_dict(), "evaluations": state.evaluations})


def _save(state: SearchState, state_dir: Path) -> None:
    state.save(state_dir / "state.json")
    write_text(state_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in state.history))
