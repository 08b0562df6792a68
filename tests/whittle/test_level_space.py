"""The search space over the database's levels: a configuration is a darwin genotype, and its objectives are those of
the database's stitched model (the KL darwin's evaluator gives, exact counts); every sampler searches it."""

from __future__ import annotations

import random

import optuna
import pytest
import torch

from evoprune.config import load_config
from evoprune.darwinlm.fitness import CandidateEvaluator
from evoprune.levels.genotype import Genotype
from evoprune.errors import UserError
from evoprune.evaluation.teacher import TeacherCache
from evoprune.obs.run_database import database_settings
from evoprune.training import TrainConfig
from evoprune.whittle.level_space import LevelSpace
from evoprune.whittle.objectives import make_objectives
from evoprune.whittle.study import make_sampler, run_study

from evoprune_tests import tiny_dense_and_db


@pytest.fixture(scope="module")
def dense_db(tiny_run_inputs, tmp_path_factory):
    return tiny_dense_and_db(tiny_run_inputs, tmp_path_factory.mktemp("db"), num_levels=5)


@pytest.fixture(scope="module")
def space(dense_db):
    return LevelSpace.of_database(dense_db[1])


def configs(space: LevelSpace) -> list[dict]:
    """The uniform genotypes and a few random configurations, all keeping some attention."""
    rng = random.Random(1)
    drawn = [space.sample(rng) for _ in range(40)]
    return space.starting_points() + [c for c in drawn if space.keeps_attention(c)][:4]


def test_a_configuration_is_the_genotype_of_one_level_per_module(space, dense_db):
    dense, db = dense_db
    n = dense.adapter.shape(dense.model).num_layers
    assert set(space.dimensions()) == {f"{kind}_{i}" for kind in ("attention", "mlp") for i in range(n)}
    assert all(space.dimensions()[f"{kind}_{i}"] == list(range(db.num_levels(kind, i)))
               for kind in ("attention", "mlp") for i in range(n))
    config = space.sample(random.Random(0))
    attention, mlp = space.levels(config)
    assert attention == [config[f"attention_{i}"] for i in range(n)] and mlp == [config[f"mlp_{i}"] for i in range(n)]
    with pytest.raises(UserError, match="outside the search space: mlp_0=99"):
        space.levels({**config, "mlp_0": 99})


def test_the_objectives_are_those_of_the_database_stitched_genotype(space, dense_db, tmp_path):
    dense, db = dense_db
    blocks = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(2))
    teacher = TeacherCache.build(dense.model, blocks, tmp_path / "t.safetensors", top_k=None)
    evaluate = make_objectives(dense.model, dense.adapter, space, ["kl", "params", "flops"], blocks, teacher,
                               batch_size=2)
    darwin = CandidateEvaluator(dense.model, dense.adapter, db, [blocks], [teacher], blocks, TrainConfig(),
                                batch_size=2)
    for config in configs(space):
        kl, params, flops = evaluate(config)
        genotype = Genotype(*map(tuple, space.levels(config)))
        spec, replace = db.stitch(list(genotype.attention), list(genotype.mlp), dense.adapter)
        assert kl == pytest.approx(darwin.kl(genotype, blocks, teacher), rel=1e-6, abs=1e-9)
        sliced = dense.adapter.slice(dense.model, spec, replace)
        assert params == spec.num_params() == sum(p.numel() for p in sliced.parameters())
        assert flops == spec.flops_per_token()
    assert evaluate(space.largest())[0] == pytest.approx(0.0, abs=1e-6)


def test_the_planned_space_has_the_database_costs(space, dense_db, tiny_run_inputs):
    dense, _ = dense_db
    cfg = load_config(None, [f"model.source={tiny_run_inputs / 'dense'}", "database.num_levels=5"])
    planned = LevelSpace.planned(dense.adapter.shape(dense.model), database_settings(cfg))
    assert planned.costs == space.costs and planned.dimensions() == space.dimensions()
    with pytest.raises(RuntimeError, match="no weights"):
        planned.stitch(planned.largest(), dense.adapter)


def test_the_uniform_genotypes_start_the_search_inside_the_constraint(space):
    starts = space.starting_points()
    assert starts[0] == space.largest() and space.smallest() not in starts
    sizes = [space.num_params(c) for c in starts]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    full = space.num_params(space.largest())
    feasible = space.constraint((0.4, 0.8), "--sparsity-range x")
    assert space.starting_points(feasible) == [c for c in starts if 0.4 <= space.num_params(c) / full <= 0.8]
    assert not feasible({**space.largest(), **{k: 0 for k in space.dimensions() if k.startswith("attention")}})
    assert not space.constraint(None)(space.smallest())  # every layer removed: no model at all
    with pytest.raises(UserError, match="--sparsity-range x"):
        space.constraint((0.9999, 0.99999), "--sparsity-range x")


@pytest.mark.parametrize("sampler", ["random", "nsga2", "local"])
def test_every_sampler_searches_the_levels_from_the_uniform_genotypes(space, sampler):
    dims = space.dimensions()
    full = space.num_params(space.largest())

    def objectives(config):  # fewer levels cost quality, unevenly over the modules
        attention, mlp = space.levels(config)
        error = sum((i + 1) * (len(dims[f"mlp_{i}"]) - 1 - m) for i, m in enumerate(mlp)) + sum(attention)
        return [float(error), space.num_params(config) / full]

    feasible = space.constraint(None)
    starts = space.starting_points(feasible)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(sampler, 0, population=4))
    run_study(study, space, objectives, budget=30, feasible=feasible, start=starts)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.params for t in complete[:len(starts)]] == starts
    assert len(complete) == 30 and all(feasible(t.params) for t in complete)
    assert len({tuple(sorted(t.params.items())) for t in complete}) > 20  # the samplers move
