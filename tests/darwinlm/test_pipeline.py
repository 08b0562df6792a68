"""DarwinLM pipeline on a tiny model: database, stitching, search, kill-and-resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from evoprune.darwinlm import pipeline as darwin
from evoprune.config import load_config
from evoprune.darwinlm.report import PROGRESS_BLOCKS
from evoprune.errors import UserError
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.evaluation.teacher_subset import TeacherSubset
from evoprune.models import load_model
from evoprune.data import data_blocks
from evoprune.models import load_source
from evoprune.obs.database import Database, DatabaseSettings
from evoprune.levels.budget import make_budget, uniform_genotype
from evoprune.darwinlm.fitness import select
from evoprune.levels.genotype import Genotype

TINY = ["data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=4", "data.batch_size=2",
        "eval.latency=false", "database.num_levels=5", "search.offspring=3", "search.generations=3",
        "search.train_tokens=[0,64]", "search.fitness_tokens=[64,128]", "search.survivors=[2,1]",
        "search.lr=0.001", "prune.sparsity=0.4"]


def config(root, *extra):
    return load_config(None, [f"model.source={root / 'dense'}", f"data.source={root / 'corpus.txt'}", *TINY, *extra])


def test_full_genotype_stitches_to_the_dense_model(tiny_run_inputs, tmp_path):
    cfg = config(tiny_run_inputs)
    dense = load_model(cfg.model.source)
    blocks = torch.randint(0, 50, (4, 32))
    db = Database.build(dense.model, dense.adapter, blocks, darwin.database_settings(cfg), tmp_path / "db",
                        batch_size=2, progress=False)
    n = dense.adapter.shape(dense.model).num_layers
    full = Genotype(tuple(db.num_levels("attention", i) - 1 for i in range(n)),
                    tuple(db.num_levels("mlp", i) - 1 for i in range(n)))
    spec, replace = db.stitch(list(full.attention), list(full.mlp), dense.adapter)
    assert spec.is_identity() and not replace
    model = dense.adapter.slice(dense.model, spec, replace)
    ids = torch.randint(0, 50, (1, 16))
    assert torch.allclose(model(ids).logits, dense.model(ids).logits, atol=1e-5)
    # a compressed level: stitched weights are the database's compensated ones, counts match the formula
    half = Genotype(tuple(1 for _ in range(n)), tuple(2 for _ in range(n)))
    spec, replace = db.stitch(list(half.attention), list(half.mlp), dense.adapter)
    model = dense.adapter.slice(dense.model, spec, replace)
    assert sum(p.numel() for p in model.parameters()) == spec.num_params()
    key = dense.adapter.parameter_name(0, "mlp_output")
    assert torch.equal(model.state_dict()["model.layers.0.mlp.down_proj.weight"], replace[key])
    assert db.size_bytes() < sum(p.numel() * p.element_size() for p in dense.model.parameters())


def test_database_refuses_other_model_and_other_settings(tiny_run_inputs, tmp_path):
    cfg = config(tiny_run_inputs)
    dense = load_model(cfg.model.source)
    blocks = torch.randint(0, 50, (2, 32))
    settings = darwin.database_settings(cfg)
    Database.build(dense.model, dense.adapter, blocks, settings, tmp_path / "db", batch_size=2, progress=False)
    with torch.no_grad():
        dense.model.model.layers[0].self_attn.o_proj.weight.add_(1.0)
    with pytest.raises(UserError, match="different model"):
        Database.load(tmp_path / "db", dense.model, dense.adapter)
    other = DatabaseSettings(**{**settings.__dict__, "num_levels": 7})
    with pytest.raises(UserError, match="num_levels"):
        Database.load(tmp_path / "db", settings=other)


def test_search_resumed_after_a_kill_equals_an_uninterrupted_run(tiny_run_inputs, tmp_path):
    cfg = config(tiny_run_inputs)
    darwin.run(cfg, tmp_path / "straight", progress=False)
    darwin.run(cfg, tmp_path / "killed", progress=False, stop_after=1)
    state = json.loads((tmp_path / "killed" / "search" / "state.json").read_text())
    assert state["generation"] == 1 and not (tmp_path / "killed" / "model").exists()
    darwin.run(cfg, tmp_path / "killed", progress=False)
    a = json.loads((tmp_path / "straight" / "search" / "state.json").read_text())
    b = json.loads((tmp_path / "killed" / "search" / "state.json").read_text())
    def timeless(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert a["parent"] == b["parent"]
    assert timeless(a["history"]) == timeless(b["history"])  # same offspring, same scores, same winners
    for name in ("model/config.json", "spec.json", "metrics.json", "report.md", "fitness.png", "kept_per_layer.png"):
        assert (tmp_path / "killed" / name).exists(), name
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert abs(metrics["target"]["achieved_sparsity"] - 0.4) < 0.1
    # the report's progress curve: every generation's parent on the same held-out blocks, ending at the export
    curve = metrics["search"]["parent_heldout_kl"]
    assert len(curve) == len(b["history"])
    dense = load_source(cfg)
    eval_blocks = data_blocks(cfg, dense.tokenizer, "eval", cfg.data.eval_blocks)
    subset = TeacherSubset(teacher_for(dense.model, str(dense.path), eval_blocks, cfg.eval, 2), eval_blocks,
                           list(range(min(PROGRESS_BLOCKS, len(eval_blocks)))))
    exported = load_model(tmp_path / "killed" / "model").model
    assert kl_to_teacher(exported, subset.blocks, subset) == pytest.approx(curve[-1], rel=1e-4)
    assert "fixed held-out blocks" in (tmp_path / "killed" / "report.md").read_text()
    for row in ("dense", "pruned"):
        assert set(metrics[row]["unseen_perplexity"]) == {"news", "howto", "math"}
        assert {"unseen_ppl_mean", "heldback_perplexity", "unseen_ppl_mean_ci95", "perplexity_ci95"} <= set(metrics[row])
    # the uniform genotype is a reference point: held-out figures only
    assert "unseen_perplexity" not in metrics["uniform_same_database"]
    assert metrics["pruned"]["kl_to_teacher"] != metrics["uniform_same_database"]["kl_to_teacher"]
    assert "## Unseen text" in (tmp_path / "killed" / "report.md").read_text()
    assert (tmp_path / "killed" / "unseen.png").exists()
    stages = {s["stage"]: s for s in metrics["memory"]["stages"]}  # the resumed call's stages
    assert {"load model", "database", "teacher and fitness caches", "search", "evaluation", "export"} <= set(stages)
    assert all(s["peak_rss_bytes"] > 0 and s["peak_anon_bytes"] > 0 for s in stages.values())
    assert "## Memory" in (tmp_path / "killed" / "report.md").read_text()


def test_resume_with_changed_settings_is_refused(tiny_run_inputs, tmp_path):
    darwin.run(config(tiny_run_inputs), tmp_path / "run", progress=False, stop_after=1)
    with pytest.raises(UserError, match=r"other settings \(search\.offspring: 3 -> 4\)"):
        darwin.run(config(tiny_run_inputs, "search.offspring=4"), tmp_path / "run", progress=False)


def test_search_phase_needs_a_database(tiny_run_inputs, tmp_path):
    with pytest.raises(UserError, match="no database"):
        darwin.run(config(tiny_run_inputs), tmp_path / "run", phase="search", progress=False)


def test_cli_impossible_budget_and_changed_resume_are_one_line_errors(tiny_run_inputs, tmp_path, capsys):
    from evoprune.cli import main

    def argv(out, sparsity):
        return ["darwin", "--model", str(tiny_run_inputs / "dense"), "--data", str(tiny_run_inputs / "corpus.txt"),
                "--out", str(out), "--quiet", "--sparsity", sparsity, *[t for t in TINY if not t.startswith("prune.")]]

    assert main(argv(tmp_path / "run", "0.999")) == 2
    err = capsys.readouterr().err
    assert "out of reach" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    darwin.run(config(tiny_run_inputs), tmp_path / "run2", progress=False, stop_after=1)
    assert main(argv(tmp_path / "run2", "0.3")) == 2
    assert "other settings (target: [0.4, None] -> [0.3, None])" in capsys.readouterr().err


def test_first_parent_is_picked_among_uniform_and_random_genotypes(tiny_run_inputs, tmp_path):
    darwin.run(config(tiny_run_inputs, "search.init_samples=5"), tmp_path / "run", progress=False, stop_after=0)
    state = json.loads((tmp_path / "run" / "search" / "state.json").read_text())
    first = state["history"][0]
    assert state["generation"] == 0 and first["generation"] == 0
    assert len(first["first_stage"]) >= 2  # uniform + distinct random genotypes, all scored
    assert state["parent"] == first["parent"]
    assert first["fitness"][0] in first["first_stage"][:2]  # the winner survived the first stage (2 survivors)


def test_latency_budget_runs_end_to_end_and_is_kept_for_resume(tiny_run_inputs, tmp_path):
    cfg = config(tiny_run_inputs, "search.metric=latency", "search.latency_tokens=8", "search.init_samples=2")
    darwin.run(cfg, tmp_path / "run", progress=False, stop_after=1)
    table = json.loads((tmp_path / "run" / "search" / "latency_table.json").read_text())
    darwin.run(cfg, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "search" / "latency_table.json").read_text()) == table
    state = json.loads((tmp_path / "run" / "search" / "state.json").read_text())
    full = sum(ladder[-1] for kind in ("attention", "mlp") for ladder in table["costs"][kind])
    assert state["history"][-1]["cost"] <= 0.6 * full + 1e-9
    assert (tmp_path / "run" / "model" / "config.json").exists()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert cfg.search.first_parent is None and metrics["search"]["first_parent"] == cfg.search.resolved()["first_parent"]
    budget = metrics["budget"]
    assert budget["metric"] == "latency" and budget["engine"] == "transformers" and budget["dense_blocks"] == pytest.approx(full)
    assert budget["achieved"] <= budget["target"] + 1e-9 and budget["achieved_fraction"] <= 0.6 + 1e-9
    assert "The budget counts latency (prefill of 8 tokens, timed in transformers)" in (tmp_path / "run" / "report.md").read_text()


def test_fitness_pool_lies_outside_the_database_and_eval_blocks(tiny_run_inputs):
    cfg = config(tiny_run_inputs, "search.fitness_pool=6")
    dense = load_source(cfg)
    pool = darwin.fitness_pool(cfg, dense, [2, 4], progress=False)
    assert len(pool.blocks) == 6
    rows = {tuple(r.tolist()) for r in pool.blocks}
    for split, n in (("calibration", cfg.data.calibration_blocks), ("eval", cfg.data.eval_blocks)):
        assert rows.isdisjoint(tuple(r.tolist()) for r in data_blocks(cfg, dense.tokenizer, split, n))
    assert torch.equal(pool.blocks, data_blocks(cfg, dense.tokenizer, "calibration", 10)[4:])
    with pytest.raises(UserError, match="calibration split has"):
        darwin.fitness_pool(config(tiny_run_inputs, "data.calibration_blocks=100000"), dense, [2, 4], progress=False)


def test_a_fitness_pool_smaller_than_a_stage_is_refused_before_any_work(tiny_run_inputs, tmp_path):
    with pytest.raises(UserError, match="fitness_pool=2"):
        darwin.run(config(tiny_run_inputs, "search.fitness_pool=2"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss", ["kd", "lm+kd"])
def test_brief_training_with_a_teacher_loss_distills_from_the_dense_model(tiny_run_inputs, tmp_path, loss):
    from evoprune.training import TrainConfig, train_on_blocks

    cfg = config(tiny_run_inputs, f"search.train_loss={loss}")
    dense = load_source(cfg)
    db = darwin.build_database(cfg, dense, tmp_path / "db", progress=False)
    evaluator = darwin.make_evaluator(cfg, dense, db, darwin.stages_of(cfg), progress=False)
    g = Genotype(tuple(1 for _ in range(4)), tuple(2 for _ in range(4)))
    trained, reference, lm_only = evaluator.build(g), evaluator.build(g), evaluator.build(g)
    before = {k: v.clone() for k, v in dense.model.state_dict().items()}
    evaluator.train(trained, 128, seed=7)
    train_on_blocks(reference, evaluator.train_blocks, 128, TrainConfig(lr=0.001, seed=7, loss=loss), teacher=dense.model)
    train_on_blocks(lm_only, evaluator.train_blocks, 128, TrainConfig(lr=0.001, seed=7, loss="lm"))
    for (name, a), b, c in zip(trained.state_dict().items(), reference.state_dict().values(),
                               lm_only.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(trained.parameters(), lm_only.parameters()))
    assert all(torch.equal(v, before[k]) for k, v in dense.model.state_dict().items())  # the teacher is untouched


def test_an_unknown_brief_training_loss_is_refused(tiny_run_inputs):
    with pytest.raises(UserError, match="search.train_loss"):
        config(tiny_run_inputs, "search.train_loss=mse")


def test_train_pool_moves_each_selections_brief_training(tiny_run_inputs, tmp_path, monkeypatch):
    cfg = config(tiny_run_inputs, "search.train_pool=6")
    dense = load_source(cfg)
    db = darwin.build_database(cfg, dense, tmp_path / "db", progress=False)
    evaluator = darwin.make_evaluator(cfg, dense, db, darwin.stages_of(cfg), progress=False)
    fixed = darwin.make_evaluator(config(tiny_run_inputs), dense, db, darwin.stages_of(cfg), progress=False)
    assert len(evaluator.train_blocks) == 6 and len(fixed.train_blocks) == 2  # TINY trains on 64 tokens of 32
    assert torch.equal(evaluator.train_blocks[:2], fixed.train_blocks)
    starts = []
    for seed in range(12):
        evaluator.begin_selection(seed)
        fixed.begin_selection(seed)
        starts.append(evaluator.train_start)
        assert fixed.train_start == 0
    assert len(set(starts)) > 2 and all(0 <= s < 6 for s in starts)
    evaluator.begin_selection(5)
    assert evaluator.train_start == starts[5]  # fixed by the seed

    seen = []
    monkeypatch.setattr("evoprune.darwinlm.fitness.train_on_blocks",
                        lambda model, blocks, tokens, cfg, start_block=0, teacher=None: seen.append(start_block))
    table = darwin.cost_table(db, "params")
    parent = uniform_genotype(table, make_budget(table, table.full() * 0.6))
    select([parent], darwin.stages_of(cfg), evaluator, seed=7)
    assert seen == [evaluator.train_start] and evaluator.train_start == starts[7]


def test_a_negative_train_pool_is_refused():
    with pytest.raises(UserError, match="search.train_pool must be >= 0"):
        load_config(None, ["search.train_pool=-1"])
