"""The optuna study: budget in completed trials, every value reachable, storage anywhere, bad studies refused
(exact resumption after a kill: test_resume.py)."""

from __future__ import annotations

import os

import optuna
import pytest
from optuna.trial import TrialState

from evoprune.arch.adapter import adapter_for
from evoprune.errors import UserError
from evoprune.whittle.space import SearchSpace
from evoprune.whittle.study import make_sampler, open_study, run_study


@pytest.fixture
def space(tiny_llama):
    shape = adapter_for(tiny_llama.config).shape(tiny_llama)
    return SearchSpace(shape, tuple(range(len(shape.layers))), multiple=8)


def objectives(config):
    size = config["hidden"] * config["layers"] * config["mlp"]
    return [1.0 / size, float(size)]


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


def test_study_drawn_from_another_search_space_is_refused(tiny_llama, tmp_path):
    shape = adapter_for(tiny_llama.config).shape(tiny_llama)
    layers = tuple(range(len(shape.layers)))
    run_study(open_study(tmp_path / "s.db", ["q", "p"], "random", 0, "m"), SearchSpace(shape, layers, multiple=8),
              objectives, budget=2)
    with pytest.raises(UserError, match="dimensions hidden, mlp differ"):
        run_study(open_study(tmp_path / "s.db", ["q", "p"], "random", 0, "m"), SearchSpace(shape, layers, multiple=4),
                  objectives, budget=3)


def test_a_study_in_a_directory_named_with_url_characters_stays_in_it(space, tmp_path):
    folder = tmp_path / "run?a=1#b%20c&d=%41"
    run_study(open_study(folder / "study.db", ["q", "p"], "random", 0, "m"), space, objectives, budget=2)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert [p.name for p in folder.iterdir()] == ["study.db"]
    assert len(open_study(folder / "study.db", ["q", "p"], "random", 0, "m").trials) == 2  # found again


@pytest.mark.parametrize("damage", [lambda data: os.urandom(len(data)), lambda data: data[: len(data) // 2]],
                         ids=["random-bytes", "truncated"])
def test_a_corrupt_study_file_is_one_line_naming_it_and_force(space, tmp_path, damage):
    path = tmp_path / "study.db"
    run_study(open_study(path, ["q", "p"], "random", 0, "m"), space, objectives, budget=8)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError) as error:
        open_study(path, ["q", "p"], "random", 0, "m")
    message = str(error.value)
    assert str(path) in message and "--force" in message and len(message.splitlines()) == 1


@pytest.mark.parametrize("sampler", ["random", "nsga2", "local"])
def test_params_range_skips_configurations_outside_it_unevaluated(space, tmp_path, sampler):
    full = space.to_spec(space.largest()).num_params()
    feasible = space.params_range_check(0.4, 0.9)
    evaluated = []

    def evaluate(config):
        evaluated.append(config)
        return objectives(config)

    study = open_study(tmp_path / "study.db", ["q", "params"], sampler, 0, "model-a", population=4)
    run_study(study, space, evaluate, budget=10, feasible=feasible)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 10 and len(evaluated) <= 10
    assert all(0.4 <= space.to_spec(c).num_params() / full <= 0.9 for c in evaluated)
    assert all(0.4 <= space.to_spec(t.params).num_params() / full <= 0.9 for t in complete)
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
