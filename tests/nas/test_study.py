"""The optuna study: budget in completed trials, resume after a kill without lost or double-counted trials."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from evoprune.arch.adapter import adapter_for
from evoprune.errors import UserError
from evoprune.nas.space import SearchSpace
from evoprune.nas.study import make_sampler, open_study, run_study


@pytest.fixture
def space(tiny_llama):
    shape = adapter_for(tiny_llama.config).shape(tiny_llama)
    return SearchSpace(shape, tuple(range(len(shape.layers))), multiple=8)


def objectives(config):
    size = config["hidden"] * config["layers"] * config["mlp"]
    return [1.0 / size, float(size)]


@pytest.mark.parametrize("sampler", ["random", "nsga2", "local"])
def test_killed_study_resumes_to_exactly_the_budget(space, tmp_path, sampler):
    path = tmp_path / "study.db"
    calls = []

    def crash_on_fifth(config):
        calls.append(config)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the process dies in the middle of a trial
        return objectives(config)

    study = open_study(path, ["q", "params"], sampler, 0, "model-a")
    with pytest.raises(KeyboardInterrupt):
        run_study(study, space, crash_on_fifth, budget=12)
    study = open_study(path, ["q", "params"], sampler, 0, "model-a")  # a new process
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert len(queued) == 1 and queued[0].system_attrs["fixed_params"] == calls[4]
    run_study(study, space, objectives, budget=12)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 12
    assert calls[4] in [t.params for t in complete]  # the interrupted configuration was evaluated after all
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 0


@pytest.mark.parametrize("sampler", ["random", "nsga2", "local"])
def test_every_sampler_reaches_every_value_of_every_dimension(space, sampler):
    dims = space.dimensions()
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(sampler, 0))
    run_study(study, space, objectives, budget=80)
    seen = {k: {t.params[k] for t in study.trials} for k in dims}
    assert seen == {k: set(v) for k, v in dims.items()}  # the top value of each included


def test_study_of_another_model_is_refused(space, tmp_path):
    open_study(tmp_path / "s.db", ["q", "params"], "random", 0, "model-a")
    with pytest.raises(UserError, match="another model"):
        open_study(tmp_path / "s.db", ["q", "params"], "random", 0, "model-b")
    with pytest.raises(UserError, match="unknown sampler"):
        open_study(tmp_path / "t.db", ["q"], "grid", 0, "model-a")
    with pytest.raises(UserError, match="positive"):
        run_study(open_study(tmp_path / "u.db", ["q", "p"], "random", 0, "m"), space, objectives, budget=0)


@pytest.mark.parametrize("sampler", ["random", "nsga2", "local"])
def test_params_range_skips_configurations_outside_it_unevaluated(space, tmp_path, sampler):
    full = space.to_spec(space.largest()).num_params()
    feasible = space.params_range_check(0.6, 0.9)
    evaluated = []

    def evaluate(config):
        evaluated.append(config)
        return objectives(config)

    study = open_study(tmp_path / "study.db", ["q", "params"], sampler, 0, "model-a", population=4)
    run_study(study, space, evaluate, budget=10, feasible=feasible)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 10 and len(evaluated) <= 10
    assert all(0.6 <= space.to_spec(c).num_params() / full <= 0.9 for c in evaluated)
    assert all(0.6 <= space.to_spec(t.params).num_params() / full <= 0.9 for t in complete)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned and all(not feasible(t.params) for t in pruned)  # the rejected ones were really outside


def test_a_params_range_no_configuration_meets_is_refused(space):
    smallest = space.to_spec(space.smallest()).num_params() / space.to_spec(space.largest()).num_params()
    with pytest.raises(UserError, match="no configuration has between"):
        space.params_range_check(0.0, smallest / 2)
    with pytest.raises(UserError, match="no configuration has between"):
        space.params_range_check(1.2, 1.5)
    study = optuna.create_study(directions=["minimize", "minimize"])
    with pytest.raises(UserError, match="outside the constraint"):
        run_study(study, space, objectives, budget=3, feasible=lambda c: False, max_rejected=50)
