"""A study stopped or killed at any point resumes to exactly what an uninterrupted one reaches:
the same completed trials, in the same order, with the same values, and the same front; with starting
points (the database's uniform genotypes, `LevelSpace.starting_points`) too."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from evoprune.whittle.pareto import pareto_front
from evoprune.whittle.pipeline import trial_rows
from evoprune.whittle.study import open_study, run_study

BUDGET = 12
SAMPLERS = ["random", "nsga2", "local"]
STARTS = {"none": (), "uniform": tuple({f"d{i}": v for i in range(4)} for v in (5, 4, 3, 2))}


class Grid:
    """A search space without a model: what `run_study` needs of one."""

    def dimensions(self) -> dict[str, list[int]]:
        return {f"d{i}": list(range(6)) for i in range(4)}


IMPORTANCE = [5.0, 0.1, 2.0, 0.5]


def objectives(config: dict) -> list[float]:
    kept = [config[f"d{i}"] / 5 for i in range(4)]
    return [sum(a * (1 - k) ** 2 for a, k in zip(IMPORTANCE, kept)), sum(kept)]


def feasible(config: dict) -> bool:
    return sum(config.values()) >= 4  # some draws are pruned, so pruned trials are part of the sequence


def new_study(path, sampler):
    """The study as a new process opens it (population 3: NSGA-II goes through several generations)."""
    return open_study(path, ["q", "c"], sampler, 7, "model", population=3)


def outcome(study) -> tuple[list, list]:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    trials = [(t.params, t.values) for t in complete]
    return trials, sorted(str(trials[i][0]) for i in pareto_front([v for _, v in trials]))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The outcome of each sampler's uninterrupted study (from each set of starting points), run once per module."""
    outcomes = {}

    def of(sampler: str, start: str = "none") -> tuple[list, list]:
        if (sampler, start) not in outcomes:
            path = tmp_path_factory.mktemp("whole") / "study.db"
            outcomes[sampler, start] = outcome(run_study(new_study(path, sampler), Grid(), objectives, BUDGET,
                                                         feasible=feasible, start=STARTS[start]))
        return outcomes[sampler, start]

    return of


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_stopped_study_resumes_to_what_an_uninterrupted_one_reaches(tmp_path, uninterrupted, sampler, start):
    path = tmp_path / "stopped.db"
    stop = 2 if STARTS[start] else 5  # with starting points, two of them are left waiting
    run_study(new_study(path, sampler), Grid(), objectives, BUDGET, stop_after=stop, feasible=feasible,
              start=STARTS[start])
    assert len(new_study(path, sampler).get_trials(states=(TrialState.COMPLETE,))) == stop
    resumed = run_study(new_study(path, sampler), Grid(), objectives, BUDGET, feasible=feasible, start=STARTS[start])
    trials, front = outcome(resumed)
    assert len(trials) == BUDGET and [config for config, _ in trials[:len(STARTS[start])]] == list(STARTS[start])
    assert (trials, front) == uninterrupted(sampler, start)
    assert start == "none" or (trials, front) != uninterrupted(sampler)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_study_killed_during_an_evaluation_finishes_that_trial_under_its_number(tmp_path, uninterrupted, sampler):
    path = tmp_path / "killed.db"
    calls = []

    def killed_on_sixth(config):
        calls.append(config)
        if len(calls) == 6:
            raise KeyboardInterrupt  # the process dies in the middle of an evaluation
        return objectives(config)

    with pytest.raises(KeyboardInterrupt):
        run_study(new_study(path, sampler), Grid(), killed_on_sixth, BUDGET, feasible=feasible)
    running = new_study(path, sampler).get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1 and running[0].params == calls[5]
    resumed = run_study(new_study(path, sampler), Grid(), objectives, BUDGET, feasible=feasible)
    assert resumed.trials[running[0].number].state == TrialState.COMPLETE
    assert not resumed.get_trials(states=(TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING))
    assert outcome(resumed) == uninterrupted(sampler)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_study_killed_while_drawing_a_configuration_draws_it_again(tmp_path, uninterrupted, sampler):
    path = tmp_path / "killed.db"
    study = run_study(new_study(path, sampler), Grid(), objectives, BUDGET, stop_after=6, feasible=feasible)
    study.ask({"d0": CategoricalDistribution(list(range(6)))})  # killed after the first dimension was drawn
    resumed = run_study(new_study(path, sampler), Grid(), objectives, BUDGET, feasible=feasible)
    assert len(resumed.get_trials(states=(TrialState.FAIL,))) == 1
    assert outcome(resumed) == uninterrupted(sampler)


def test_reported_trials_are_numbered_as_in_an_uninterrupted_study(tmp_path):
    """A draw cut short by a kill stays in the study as a failed trial; the rows users see skip it."""
    whole = run_study(new_study(tmp_path / "whole.db", "nsga2"), Grid(), objectives, BUDGET, feasible=feasible)
    path = tmp_path / "killed.db"
    study = run_study(new_study(path, "nsga2"), Grid(), objectives, BUDGET, stop_after=6, feasible=feasible)
    study.ask({"d0": CategoricalDistribution(list(range(6)))})
    resumed = run_study(new_study(path, "nsga2"), Grid(), objectives, BUDGET, feasible=feasible)
    assert [t.number for t in resumed.trials] != [t.number for t in whole.trials]  # the failed draw took a number
    assert trial_rows(resumed, ["q", "c"]) == trial_rows(whole, ["q", "c"])
    assert [r["trial"] for r in trial_rows(resumed, ["q", "c"])] == list(range(BUDGET))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_starting_point_killed_while_its_parameters_were_written_is_evaluated_in_its_place(tmp_path, uninterrupted,
                                                                                             sampler):
    path = tmp_path / "killed.db"
    study = run_study(new_study(path, sampler), Grid(), objectives, BUDGET, stop_after=1, feasible=feasible,
                      start=STARTS["uniform"])
    study.ask({"d0": CategoricalDistribution(list(range(6)))})  # the second starting point, killed after d0
    resumed = run_study(new_study(path, sampler), Grid(), objectives, BUDGET, feasible=feasible,
                        start=STARTS["uniform"])
    assert not resumed.get_trials(states=(TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING))
    assert outcome(resumed) == uninterrupted(sampler, "uniform")
