"""`evoprune nas --weights database` end to end on a tiny model: every trial scores the KL darwin's evaluator gives
the same genotype of the same database, the uniform genotypes come first, the pick is exported with the database's
weights, and the run resumes, refusing another weight source or database."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from evoprune.cli import main
from evoprune.config import load_config
from evoprune.darwinlm.fitness import CandidateEvaluator
from evoprune.levels.genotype import Genotype
from evoprune.data import data_blocks
from evoprune.evaluation.suite import teacher_for
from evoprune.models import load_source
from evoprune.obs.database import Database
from evoprune.training import TrainConfig
from evoprune.weights.compute_dtype import inference_slice
from evoprune.whittle.level_space import LevelSpace

from .test_nas_cli import TINY, no_model_load, one_line_error, trials  # noqa: F401 (a fixture)

FIELDS = [*TINY, "database.num_levels=5"]


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


def test_the_search_starts_from_the_uniform_genotypes_inside_the_range(database_run, searched):
    space = LevelSpace.of_database(searched[1])
    full = space.num_params(space.largest())
    bounds = json.loads((database_run / "pareto.json").read_text())["params_range"]
    starts = [c for c in space.starting_points() if bounds[0] <= space.num_params(c) / full <= bounds[1]]
    assert starts and [config for config, _ in completed(database_run)[:len(starts)]] == starts


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
