"""The evolutionary search loop (DarwinLM): mutate the parent, select among offspring, repeat.

Each generation makes `offspring` level-switch mutations of the parent; the parent competes with
them (elitism) through the selection stages; the winner becomes the next parent. The state is
written atomically after every generation, so a killed search resumes exactly where it stopped
and reaches the same result as an uninterrupted one.
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
from .budget import Budget, CostTable, uniform_genotype
from .fitness import CandidateEvaluator, Stage, select
from .genotype import Genotype
from .mutation import mutate
from .state import SearchState, rng_state

log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    best: Genotype
    state: SearchState


def evolve(evaluator: CandidateEvaluator, table: CostTable, budget: Budget, stages: list[Stage], offspring: int,
           generations: int, seed: int, trade: bool, state_dir: Path, config: dict, progress: bool = True,
           stop_after: int | None = None) -> SearchResult:
    """Run (or resume) the search in `state_dir`.

    Args:
        config: the search-relevant settings; stored in the state and compared on resume.
        stop_after: end after this many generations in this call (tests use it to simulate a kill).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file = state_dir / "state.json"
    if state_file.exists():
        state = SearchState.load(state_file, config)
        log.info("resuming search at generation %d", state.generation)
    else:
        rng = random.Random(seed)
        state = SearchState(config, 0, uniform_genotype(table, budget), rng_state(rng))
    rng = state.restore_rng()
    bar = tqdm(total=generations, initial=state.generation, desc="search", disable=not progress)
    done_here = 0
    while state.generation < generations and (stop_after is None or done_here < stop_after):
        started = time.time()
        children = [mutate(state.parent, table, budget, rng, trade) for _ in range(offspring)]
        before = evaluator.evaluations
        winner, scores = select([state.parent] + children, stages, evaluator, seed=seed * 100003 + state.generation)
        state.generation += 1
        state.parent = winner
        state.rng = rng_state(rng)
        state.evaluations += evaluator.evaluations - before
        state.seconds += time.time() - started
        state.history.append({"generation": state.generation, "fitness": [s[winner] for s in scores],
                              "best_first_stage": min(scores[0].values()),
                              "first_stage": sorted(scores[0].values()), "cost": table.cost(winner),
                              "parent": winner.to_dict(), "evaluations": state.evaluations,
                              "seconds": round(state.seconds, 2)})
        state.save(state_file)
        write_text(state_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in state.history))
        bar.update(1)
        bar.set_postfix(kl=f"{state.history[-1]['fitness'][-1]:.4f}")
        done_here += 1
    bar.close()
    return SearchResult(state.parent, state)
