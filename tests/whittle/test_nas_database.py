"""`evoprune nas --weights database` end to end on a tiny model: every trial scores the KL darwin's evaluator gives
the same genotype of the same database, the MIP assemblies of the replace-one scores come first (with `--start
uniform` the uniform genotypes), the pick is exported with the database's weights, and the run resumes (a killed
one without enqueueing its start twice), refusing another weight source or database."""

from __future__ import annotations

import json
import shutil

import optuna
import pytest
import torch
from transformers import AutoModelForCausalLM

from evoprune.arch.params import block_params
from evoprune.arch.target import resolve_target
from evoprune.cli import main
from evoprune.config import load_config
from evoprune.darwinlm.fitness import CandidateEvaluator
from evoprune.data import data_blocks
from evoprune.evaluation.suite import teacher_for
from evoprune.evaluation.teacher import kl_to_teacher
from evoprune.levels.assemble import assemble
from evoprune.levels.budget import CostTable, make_budget
from evoprune.levels.genotype import Genotype
from evoprune.levels.replace_one import replace_one_scores
from evoprune.models import load_source
from evoprune.obs.database import KINDS, Database
from evoprune.training import TrainConfig
from evoprune.weights.compute_dtype import inference_slice
from evoprune.whittle import pipeline as nas_pipeline
from evoprune.whittle.level_space import LevelSpace
from evoprune.whittle.mip_start import mip_sparsities, replace_one_blocks
from evoprune.whittle.study import STUDY_NAME, storage_url

from .test_nas_cli import TINY, no_model_load, one_line_error, trials  # noqa: F401 (a fixture)

FIELDS = [*TINY, "database.num_levels=5", "nas.mip_step=0.1"]  # MIP starts at 0.1, 0.2, ..., 0.7: within the 8 trials


def argv(root, out, *extra):
    return ["nas", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out), "--quiet",
            "--objectives", "kl,params", "--trials", "8", "--weights", "database", *FIELDS, *extra]


@pytest.fixture(scope="module")
def database_run(tiny_run_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("database") / "n"
    assert main(argv(tiny_run_inputs, out)) == 0
    return out


@pytest.fixture(scope="module")
def searched(tiny_run_inputs, database_run):
    """The run's dense model, database, search blocks and their teacher, rebuilt as the run built them."""
    cfg = load_config(None, [f"model.source={tiny_run_inputs / 'dense'}",
                             f"data.source={tiny_run_inputs / 'corpus.txt'}", *FIELDS])
    dense = load_source(cfg)
    n = cfg.data.calibration_blocks
    blocks = data_blocks(cfg, dense.tokenizer, "calibration", n + cfg.data.eval_blocks)[n:]
    teacher = teacher_for(dense.model, str(dense.path), blocks, cfg.eval, cfg.data.batch_size, False)
    return dense, Database.load(database_run / "database"), blocks, teacher


def completed(out) -> list[tuple[dict, list[float]]]:
    return [(params, values) for _, state, params, values in trials(out) if state == "COMPLETE"]


def test_every_trial_scores_the_kl_of_its_genotype_stitched_from_the_database(database_run, searched):
    dense, db, blocks, teacher = searched
    darwin = CandidateEvaluator(dense.model, dense.adapter, db, [blocks], [teacher], blocks, TrainConfig(),
                                batch_size=2)
    space = LevelSpace.of_database(db)
    rows = completed(database_run)
    assert len(rows) == 8
    for config, (kl, params) in rows:
        attention, mlp = space.levels(config)
        assert kl == pytest.approx(darwin.kl(Genotype(tuple(attention), tuple(mlp)), blocks, teacher),
                                   rel=1e-6, abs=1e-9)
        assert params == db.stitch(attention, mlp, dense.adapter)[0].num_params()


def test_with_start_uniform_the_search_starts_from_the_uniform_genotypes_inside_the_range(uniform_run, searched):
    space = LevelSpace.of_database(searched[1])
    full = space.num_params(space.largest())
    bounds = json.loads((uniform_run / "pareto.json").read_text())["params_range"]
    starts = [c for c in space.starting_points() if bounds[0] <= space.num_params(c) / full <= bounds[1]]
    assert starts and [config for config, _ in completed(uniform_run)[:len(starts)]] == starts
    assert "start" not in json.loads((uniform_run / "nas_run.json").read_text())  # as runs saved before --start


def test_the_pick_is_the_stitched_genotype_with_the_database_weights(database_run, searched):
    dense, db, _, _ = searched
    front = json.loads((database_run / "pareto.json").read_text())
    assert front["weights"] == "database"
    picked = next(r for r in front["front"] if r["trial"] == front["picked_trial"])
    space = LevelSpace.of_database(db)
    config = {k: picked[k] for k in space.dimensions()}
    stitched = inference_slice(dense.model, dense.adapter, *space.stitch(config, dense.adapter))
    model = AutoModelForCausalLM.from_pretrained(database_run / "picks" / front["pick_folder"],
                                                 trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == picked["params"]
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    assert torch.allclose(model(input_ids=ids).logits, stitched(input_ids=ids).logits, atol=1e-5)
    assert json.loads((database_run / "metrics.json").read_text())["pick"]["params"] == picked["params"]
    report = (database_run / "report.md").read_text()
    assert "Weights `database`" in report and "attention_levels" in report
    assert (database_run / "database").is_symlink() and (database_run / "database" / "index.json").is_file()


def test_a_rerun_resumes_and_another_weight_source_or_database_is_refused(tiny_run_inputs, database_run, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    shutil.copytree(database_run, out, symlinks=True)
    before = trials(out)
    assert main(argv(tiny_run_inputs, out)) == 0
    assert trials(out) == before
    capsys.readouterr()
    for changed, named in ((["--weights", "importance"], "prune.weights: 'database' -> (unset)"),
                           (["database.num_levels=4"], "database.num_levels: 5 -> 4")):
        assert main([*argv(tiny_run_inputs, out), *changed]) == 2
        assert named in one_line_error(capsys)
    assert trials(out) == before


@pytest.mark.usefixtures("no_model_load")
def test_supernet_training_with_database_weights_is_refused_before_anything_is_written(tiny_run_inputs, tmp_path,
                                                                                       capsys):
    assert main(argv(tiny_run_inputs, tmp_path / "n", "--supernet-steps", "5")) == 2
    assert "nas.supernet_steps (--supernet-steps) trains the importance-sorted weights" in one_line_error(capsys)
    assert not (tmp_path / "n").exists()


@pytest.fixture(scope="module")
def uniform_run(tiny_run_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("uniform") / "n"
    assert main(argv(tiny_run_inputs, out, "--start", "uniform")) == 0
    return out


def mip_config(space: LevelSpace, scores: dict, sparsity: float) -> dict:
    """darwin's MIP assembly at `sparsity` (its budget as darwin's pipeline makes it), as a nas configuration."""
    table = CostTable("params", space.db.costs("params"))
    target = resolve_target(space.shape, sparsity=sparsity)
    budget = make_budget(table, table.full() * target.block_params / block_params(space.shape))
    genotype = assemble(scores, table, budget)
    return {f"{kind}_{i}": level for kind in KINDS for i, level in enumerate(genotype.genes(kind))}


def test_the_search_starts_from_the_mip_assemblies_of_the_replace_one_scores(database_run, searched):
    dense, db, blocks, teacher = searched
    space = LevelSpace.of_database(db)
    start = json.loads((database_run / "pareto.json").read_text())["start_trials"]
    assert json.loads((database_run / "nas_run.json").read_text())["start"]["method"] == "mip"
    assert set(start["sparsities"]) <= set(mip_sparsities((0.1, 0.75), 0.1))
    assert start["sparsities"][0] == 0.5  # the pick's size (prune.sparsity's default) first, then the range
    subset = replace_one_blocks(blocks, teacher, 1024)
    scores = replace_one_scores(dense.model, dense.adapter, db, subset.blocks, subset, batch_size=2, progress=False)
    stored = json.loads((database_run / "replace_one.json").read_text())["layers"]  # the scores it assembled from
    for kind in KINDS:
        for i in range(db.shape.num_layers):
            assert stored[str(i)][kind] == pytest.approx(scores.scores[kind][i], rel=1e-5, abs=1e-9)
    expected = [mip_config(space, scores.scores, s) for s in start["sparsities"]]
    assert len({json.dumps(c, sort_keys=True) for c in expected}) == start["trials"] == len(expected)
    rows = completed(database_run)
    assert [config for config, _ in rows[:len(expected)]] == expected
    # the genotype darwin's mip profile assembles at the default size (0.5) is a trial, with the KL of its slice
    half = next(row for row in rows if row[0] == mip_config(space, scores.scores, 0.5))
    sliced = inference_slice(dense.model, dense.adapter, *space.stitch(half[0], dense.adapter))
    assert half[1][0] == pytest.approx(kl_to_teacher(sliced, blocks, teacher, batch_size=2), rel=1e-6, abs=1e-9)
    assert "MIP assembly of replace-one KLs" in (database_run / "report.md").read_text()


def enqueued(out) -> list[dict]:
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(out / "study.db"))
    return [t.params for t in study.get_trials(deepcopy=False) if "fixed_params" in t.system_attrs]


def test_a_run_killed_after_the_mip_start_resumes_without_enqueueing_or_scoring_again(tiny_run_inputs, database_run,
                                                                                      tmp_path, monkeypatch):
    out = tmp_path / "killed"
    starts = json.loads((database_run / "pareto.json").read_text())["start_trials"]["trials"]
    real = nas_pipeline.run_study

    def killed_after_two(*args, **kwargs):
        real(*args, **kwargs, stop_after=2)
        raise KeyboardInterrupt

    monkeypatch.setattr(nas_pipeline, "run_study", killed_after_two)
    assert main(argv(tiny_run_inputs, out)) == 130
    assert len(enqueued(out)) == starts and len(completed(out)) == 2
    monkeypatch.setattr(nas_pipeline, "run_study", real)

    def scored_again(*args, **kwargs):
        raise AssertionError("a resumed study scored the MIP start again")

    monkeypatch.setattr(nas_pipeline, "mip_start", scored_again)
    assert main(argv(tiny_run_inputs, out)) == 0
    assert trials(out) == trials(database_run)  # the same trials, each start once, as the run never killed
    assert main(argv(tiny_run_inputs, out, "--trials", "10")) == 0  # extended: still no second start
    assert len(enqueued(out)) == starts and len(completed(out)) == 10


def test_a_mip_start_with_importance_weights_is_refused(tiny_run_inputs, tmp_path, capsys):
    assert main([*argv(tiny_run_inputs, tmp_path / "n"), "--weights", "importance", "--start", "mip"]) == 2
    assert "nas.start (--start) mip chooses the first genotypes of the database's levels" in one_line_error(capsys)
