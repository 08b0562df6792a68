"""Samplers that propose the same trials whether or not the study was interrupted and resumed.

Optuna's samplers seed their random generator once, when they are built; a study resumed in a
new process starts that generator again at the seed and draws the configurations it already ran.
`PositionSeededSampler` builds its sampler anew before every trial, seeded by (seed, number of
trials completed or pruned so far). What a trial is given is then a function of the seed and the
study's history alone, so a resumed study proposes what the uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, NSGAIISampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


def finished_trials(study: Study) -> int:
    """Trials completed or pruned: a trial's place in the sequence an uninterrupted study runs."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def trial_seed(seed: int, position: int) -> int:
    """A 32-bit seed (numpy's range) for the trial at `position` of a study seeded with `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{position}".encode()).digest()[:4], "little")


class PositionSeededSampler(BaseSampler):
    """Delegates to `make(trial_seed(seed, position))`, a sampler built for each trial.

    The wrapped sampler must keep no state between trials other than its random generator and
    caches of what it reads from the study (true of optuna's RandomSampler and NSGAIISampler, whose
    generations and parent populations live in the study's storage).
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int):
        self._make, self._seed = make, seed
        self._sampler = make(trial_seed(seed, 0))

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._sampler = self._make(trial_seed(self._seed, finished_trials(study)))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


class TrialOrderNSGAIISampler(NSGAIISampler):
    """NSGA-II whose parent population is in trial order, whether just selected or read back.

    Optuna selects a generation's parents once, for its first trial, and stores them in the
    study; it returns them in rank order the first time and in trial order when read back. A
    trial drawn by a killed process then leaves its successor other parents to index into.
    """

    def select_parent(self, study: Study, generation: int) -> list[FrozenTrial]:
        return sorted(super().select_parent(study, generation), key=lambda trial: trial.number)
