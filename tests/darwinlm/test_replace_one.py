"""Replace-one scores and their MIP assembly (Puzzle), on a tiny model and on hand-made tables."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from evoprune.darwinlm import pipeline as darwin
from evoprune.errors import UserError
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.obs.database import Database
from evoprune.levels.assemble import assemble
from evoprune.levels.budget import Budget, CostTable, make_budget
from evoprune.levels.genotype import Genotype
from evoprune.levels.replace_one import interpolated, measured_levels, replace_one_scores
from darwinlm.test_pipeline import config


def _full(db: Database, n: int) -> Genotype:
    return Genotype(tuple(db.num_levels("attention", i) - 1 for i in range(n)),
                    tuple(db.num_levels("mlp", i) - 1 for i in range(n)))


def test_each_score_is_the_kl_of_the_sliced_model_with_that_one_module_replaced(tiny_db, tmp_path):
    cfg, dense, db, blocks, teacher = tiny_db
    before = {k: v.clone() for k, v in dense.model.state_dict().items()}
    scores = replace_one_scores(dense.model, dense.adapter, db, blocks, teacher, batch_size=2, progress=False,
                                all_levels=True).scores
    n = db.shape.num_layers
    full = _full(db, n)
    checked = 0
    for kind, i in itertools.product(("attention", "mlp"), range(n)):
        assert scores[kind][i][-1] == 0.0
        for level in range(db.num_levels(kind, i) - 1):
            genes = list(full.genes(kind))
            genes[i] = level
            spec, replace = db.stitch(*[list(g) for g in (full.with_genes(kind, genes).attention,
                                                          full.with_genes(kind, genes).mlp)], dense.adapter)
            sliced = dense.adapter.slice(dense.model, spec, replace)
            assert scores[kind][i][level] == pytest.approx(kl_to_teacher(sliced, blocks, teacher, 2), rel=1e-4,
                                                           abs=1e-6)
            checked += 1
    assert checked > 20
    after = dense.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the dense model must be left as it was"


def test_by_default_two_levels_are_measured_and_the_rest_follow_the_obs_errors(tiny_db):
    cfg, dense, db, blocks, teacher = tiny_db
    exact = replace_one_scores(dense.model, dense.adapter, db, blocks, teacher, 2, progress=False, all_levels=True)
    quick = replace_one_scores(dense.model, dense.adapter, db, blocks, teacher, 2, progress=False)
    for kind, i in itertools.product(("attention", "mlp"), range(db.shape.num_layers)):
        measured = measured_levels(db, kind, i, all_levels=False)
        assert 0 in measured and len(measured) <= 2
        for level in measured:
            assert quick.scores[kind][i][level] == pytest.approx(exact.scores[kind][i][level], rel=1e-6)
        errors = [lv.error for lv in db.levels[kind][i]]
        by_error = sorted(range(len(errors)), key=lambda lv: errors[lv])
        values = [quick.scores[kind][i][lv] for lv in by_error]
        assert values == sorted(values)  # more reconstruction error, never a smaller score
        assert quick.scores[kind][i][-1] == 0.0


def test_interpolation_is_linear_in_the_error_between_measured_points():
    assert interpolated([4.0, 2.0, 1.0, 0.0], {0: 8.0, 2: 1.0}) == [8.0, pytest.approx(1.0 + 7.0 / 3), 1.0, 0.0]
    assert interpolated([1.0, 4.0, 0.0], {0: 2.0}) == [2.0, 8.0, 0.0]  # beyond the points: proportional


def test_scores_resume_from_their_file_and_ignore_a_file_made_from_other_blocks(tiny_db, tmp_path):
    cfg, dense, db, blocks, teacher = tiny_db
    path = tmp_path / "replace_one.json"
    straight = replace_one_scores(dense.model, dense.adapter, db, blocks, teacher, 2, path, progress=False)
    saved = json.loads(path.read_text())
    del saved["layers"]["2"], saved["layers"]["3"]
    path.write_text(json.dumps(saved))
    resumed = replace_one_scores(dense.model, dense.adapter, db, blocks, teacher, 2, path, progress=False)
    assert resumed.scores == straight.scores
    other = blocks.flip(0)
    other_teacher = teacher_for(dense.model, str(cfg.model.source), other, cfg.eval, 2, False)
    rescored = replace_one_scores(dense.model, dense.adapter, db, other, other_teacher, 2, path, progress=False)
    assert rescored.scores != straight.scores
    path.write_text("{not json")
    assert replace_one_scores(dense.model, dense.adapter, db, blocks, teacher, 2, path,
                              progress=False).scores == straight.scores


def _brute_force(scores, table: CostTable, budget: Budget) -> float:
    best = float("inf")
    n = table.num_layers()
    ranges = [range(table.num_levels(k, i)) for k in ("attention", "mlp") for i in range(n)]
    for levels in itertools.product(*ranges):
        g = Genotype(tuple(levels[:n]), tuple(levels[n:]))
        if budget.admits(table.cost(g)) and any(g.attention):
            best = min(best, sum(scores[k][i][lv] for k in ("attention", "mlp") for i, lv in enumerate(g.genes(k))))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_assembly_is_the_cheapest_genotype_inside_the_budget(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 3
    costs = {"attention": [[0, 2, 4, 6]] * n, "mlp": [[0, 3, 6, 9, 12]] * n}
    table = CostTable("params", costs)
    scores = {k: [sorted((torch.rand(len(c), generator=gen) * 5).tolist(), reverse=True)[:-1] + [0.0]
                  for c in costs[k]] for k in costs}
    budget = make_budget(table, table.full() * (0.3 + 0.4 * torch.rand(1, generator=gen).item()))
    g = assemble(scores, table, budget)
    assert budget.admits(table.cost(g)) and any(g.attention)
    value = sum(scores[k][i][lv] for k in ("attention", "mlp") for i, lv in enumerate(g.genes(k)))
    assert value == pytest.approx(_brute_force(scores, table, budget))


def test_assembly_keeps_some_attention_even_when_removing_all_of_it_scores_best():
    table = CostTable("params", {"attention": [[0, 10]] * 2, "mlp": [[0, 10]] * 2})
    scores = {"attention": [[0.0, 0.0]] * 2, "mlp": [[5.0, 0.0]] * 2}
    g = assemble(scores, table, Budget(20, 10))
    assert any(g.attention)


def test_assembly_refuses_scores_of_another_ladder():
    table = CostTable("params", {"attention": [[0, 10]] * 2, "mlp": [[0, 10]] * 2})
    with pytest.raises(UserError, match="levels"):
        assemble({"attention": [[0.0, 0.0, 0.0]] * 2, "mlp": [[0.0, 0.0]] * 2}, table, Budget(20, 10))


def test_mip_first_parent_search_is_in_budget_and_resumes_exactly(tiny_run_inputs, tmp_path):
    cfg = config(tiny_run_inputs, "search.first_parent=mip", "search.replace_one_tokens=64",
                 "search.fitness_pool=6")
    darwin.run(cfg, tmp_path / "straight", progress=False)
    darwin.run(cfg, tmp_path / "killed", progress=False, stop_after=1)
    (tmp_path / "killed" / "search" / "replace_one.json").unlink()  # scores are remade identically
    darwin.run(cfg, tmp_path / "killed", progress=False)
    a = json.loads((tmp_path / "straight" / "search" / "state.json").read_text())
    b = json.loads((tmp_path / "killed" / "search" / "state.json").read_text())
    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert a["parent"] == b["parent"] and timeless(a["history"]) == timeless(b["history"])
    metrics = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    table = darwin.cost_table(Database.load(tmp_path / "straight" / "database"), "params")
    budget = make_budget(table, metrics["target"]["target_block_params"])
    assert budget.admits(table.cost(Genotype.from_dict(a["parent"])))
    assert len(a["history"][0]["first_stage"]) == 2  # the MIP genotype competed with the uniform one


def test_scores_are_exact_on_a_hybrid_sliding_window_model(tmp_path):
    """Layers of another attention type than layer 0 get their own mask, as in the model's forward."""
    from evoprune.models import load_model
    from evoprune_tests import CASES_BY_ID

    source = tmp_path / "hybrid"
    CASES_BY_ID["qwen2-mha-hybrid-sw4"].build().save_pretrained(source)
    dense = load_model(str(source), with_tokenizer=False)
    settings = darwin.database_settings(darwin_config_for(source))
    db = Database.build(dense.model, dense.adapter, torch.randint(0, 99, (4, 32), generator=torch.Generator().manual_seed(1)),
                        settings, tmp_path / "db", batch_size=2, progress=False)
    blocks = torch.randint(0, 99, (3, 32), generator=torch.Generator().manual_seed(2))
    teacher = teacher_for(dense.model, str(source), blocks, darwin_config_for(source).eval, 2, False)
    scores = replace_one_scores(dense.model, dense.adapter, db, blocks, teacher, batch_size=2, progress=False,
                                all_levels=True).scores
    full = _full(db, db.shape.num_layers)
    for kind in ("attention", "mlp"):
        genes = list(full.genes(kind))
        genes[2] = 1  # a sliding-window layer after the full-attention layer 0
        g = full.with_genes(kind, genes)
        spec, replace = db.stitch(list(g.attention), list(g.mlp), dense.adapter)
        sliced = dense.adapter.slice(dense.model, spec, replace)
        assert scores[kind][2][1] == pytest.approx(kl_to_teacher(sliced, blocks, teacher, 2), rel=1e-4, abs=1e-6)


def darwin_config_for(source):
    from evoprune.config import load_config

    return load_config(None, [f"model.source={source}"])
