"""`evoprune nas` end to end on a tiny model: pareto.csv, a pick exported as a loadable HF checkpoint of exactly
the picked size, resume, bad input refused before anything is written, one writer per run directory."""

from __future__ import annotations

import collections
import json
import os
import shutil

import optuna
import pytest
import torch
from transformers import AutoModelForCausalLM

import evoprune.whittle.pipeline as nas_pipeline
from evoprune.cli import main
from evoprune.arch.llama import LlamaFamilyAdapter
from evoprune.arch.target import total_at_sparsity
from evoprune.config import RunConfig
from evoprune.errors import UserError
from evoprune.whittle.study import STUDY_NAME, storage_url
from evoprune.rundir import run_lock

TINY = ["data.seq_len=16", "data.calibration_blocks=2", "data.eval_blocks=2", "data.batch_size=2",
        "eval.prompt_len=8", "eval.new_tokens=2", "eval.repeats=1"]


def argv(root, out, *extra, model=None):
    return ["nas", "--model", str(model or root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out),
            "--quiet", "--trials", "6", "--sampler", "random", *TINY, *extra]


def trials(out) -> list[tuple]:
    """(number, state, params, values) of every trial in the run's study."""
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(out / "study.db"))
    return [(t.number, t.state.name, t.params, t.values) for t in study.trials]


def states(rows: list[tuple]) -> dict[str, int]:
    """How many trials of `trials(out)` ended in each state."""
    return dict(collections.Counter(state for _, state, _, _ in rows))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the run loads the model: what is checked here must be refused before."""
    def load_source(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(nas_pipeline, "load_source", load_source)


def test_nas_writes_the_front_and_exports_the_pick(tiny_run_inputs, tmp_path, capsys):
    """Over importance-sorted slices (the database's levels: test_nas_database.py)."""
    out, given = tmp_path / "n", ["--sparsity", "0.2", "--weights", "importance"]
    assert main(argv(tiny_run_inputs, out, *given)) == 0
    front = json.loads((out / "pareto.json").read_text())
    assert front["front"] and (out / "pareto.csv").read_text().startswith("trial,kl,params")
    picked = next(r for r in front["front"] if r["trial"] == front["picked_trial"])
    assert front["pick"] == "sparsity>=0.2" and front["pick_folder"] == "sparsity-ge-0.2"
    model = AutoModelForCausalLM.from_pretrained(out / "picks" / "sparsity-ge-0.2", trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == picked["params"]  # the HF checkpoint is the pick, exactly
    assert len(model.model.layers) == picked["layers"]
    assert torch.isfinite(model(input_ids=torch.tensor([[3, 4, 5]])).logits).all()
    first = trials(out)
    assert states(first)["COMPLETE"] == 6 and set(states(first)) <= {"COMPLETE", "PRUNED"}  # pruned: outside the range
    metrics = json.loads((out / "metrics.json").read_text())  # the pick beside the dense model, unseen text too
    assert metrics["pick"]["params"] == picked["params"] < metrics["full"]["params"]
    assert set(metrics["pick"]["unseen_perplexity"]) == {"news", "howto", "math"}
    assert {"unseen_ppl_mean", "heldback_perplexity"} <= set(metrics["pick"])
    assert "## Unseen text" in (out / "report.md").read_text()
    assert {"load model", "search", "export", "evaluation"} <= {s["stage"] for s in metrics["memory"]["stages"]}
    assert metrics["memory"]["peak_anon_bytes"] > 0 and "## Memory" in (out / "report.md").read_text()

    assert main(argv(tiny_run_inputs, out, *given)) == 0  # resumes: nothing left to do
    assert trials(out) == first
    assert json.loads((out / "pareto.json").read_text()) == front

    assert main(argv(tiny_run_inputs, out, *given, "--trials", "8")) == 0  # a larger budget
    extended = trials(out)
    assert extended[:len(first)] == first and states(extended)["COMPLETE"] == 8
    front_rows = json.loads((out / "pareto.json").read_text())["front"]
    assert {r["trial"] for r in front_rows} <= set(range(8)) and front_rows != []
    capsys.readouterr()
    # a named pick no front point meets (at the edge of the range: only a point of exactly that size would)
    assert main(argv(tiny_run_inputs, tmp_path / "n2", "--sparsity", "0.75", "--pick", "target", "--weights",
                     "importance")) == 2
    assert "no configuration on the front meets sparsity>=0.75" in one_line_error(capsys)


@pytest.mark.parametrize("extra, message", [
    (["--trials", "0"], "nas.trials (--trials) must be a positive number"),
    (["--supernet-steps", "-5"], "nas.supernet_steps (--supernet-steps) must be 0"),
    (["--pick", "bogus"], "nas.pick (--pick) must be target or knee, got 'bogus'"),
    (["--pick", "target", "--objectives", "kl,loss"], "nas.pick target needs params among the objectives"),
    (["--objectives", "kl,speed"], "unknown: speed"),
    (["--objectives", "kl,params,kl"], "names kl twice"),
    (["--sampler", "grid"], "invalid choice: 'grid'"),
    (["--sparsity-range", "0.75,0.1"], "nas.sparsity_range (--sparsity-range) needs 0 <= LOW < HIGH <= 1"),
    (["--sparsity-range", "0.2,1.5"], "needs 0 <= LOW < HIGH <= 1"),
    (["--sparsity-range=-0.2,0.5"], "needs 0 <= LOW < HIGH <= 1"),
    (["--sparsity-range", "half"], "takes two sparsities LOW,HIGH"),
    (["--sparsity-range", "0.5"], "takes two sparsities LOW,HIGH"),
    (["--sparsity", "1.5"], "prune.sparsity must be strictly between 0 and 1"),
    (["--sparsity", "0"], "prune.sparsity must be strictly between 0 and 1"),
    (["--sparsity", "0.9"], "the size target --sparsity 0.9 lies outside the searched sparsities 0.1-0.75 (the default)"),
    (["--sparsity", "0.3", "--sparsity-range", "0.4,0.6"], "--sparsity 0.3 lies outside the searched sparsities 0.4-0.6"),
    (["--target-params", "999999999"], "not smaller than the model"),  # above the dense size
    (["--target-params", "100"], "below the embeddings and LM head alone"),
    (["--target-params", "36000"], "--target-params 36,000 (sparsity 0.008) lies outside the searched sparsities"),
    # the former spellings, converted with the model's shape, are checked the same way
    (["--pick", "params<=abc"], "FRACTION must be a number"),
    (["--pick", "params<=1.5"], "FRACTION must be in (0, 1]"),
    (["--pick", "params<=0.5", "--objectives", "kl,loss"], "needs params among the objectives"),
    (["--pick", "params<=0.5", "--sparsity", "0.5"], "give only --target-params or --sparsity"),
    (["--params-range", "0.9,0.5"], "needs 0 <= low < high"),
    (["--params-range", "0.5"], "takes two fractions LOW,HIGH"),
    (["--params-range", "all"], "or `full` for the whole space"),
    (["--params-range", "0.4,0.9", "--sparsity-range", "0.1,0.5"], "give only --sparsity-range"),
    (["--pick", "params<=0.3"], "lies outside the searched sparsities 0.1-0.75 (the default)"),
    (["--pick", "params<=0.3", "--params-range", "0.35,1"], "lies outside the searched sparsities 0-0.7608"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tiny_run_inputs, tmp_path, capsys, no_model_load,
                                                              extra, message):
    out = tmp_path / "n"
    assert main(argv(tiny_run_inputs, out, *extra)) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_an_unknown_sampler_is_refused_before_anything_is_written(tmp_path, no_model_load):
    cfg = RunConfig()
    cfg.nas.sampler = "grid"
    with pytest.raises(UserError, match="nas.sampler \\(--sampler\\) must be local, nsga2 or random, got 'grid'"):
        nas_pipeline.run(cfg, tmp_path / "n")
    assert not (tmp_path / "n").exists()


def test_a_second_process_on_the_same_out_is_refused_naming_the_first(tiny_run_inputs, tmp_path, capsys,
                                                                        no_model_load):
    out = tmp_path / "n"
    with run_lock(out, "evoprune nas --out n (the first)"):
        assert main(argv(tiny_run_inputs, out)) == 2
    err = one_line_error(capsys)
    assert f"pid {os.getpid()}: evoprune nas --out n (the first)" in err and "another process" in err
    assert not out.exists()


def test_the_sparsity_range_bounds_the_front_and_bad_ranges_are_one_line(tiny_run_inputs, tmp_path, capsys):
    assert main(argv(tiny_run_inputs, tmp_path / "n", "--sparsity-range", "0,0.7", "--sparsity", "0.3")) == 0
    front = json.loads((tmp_path / "n" / "pareto.json").read_text())
    dense = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "dense")
    shape = LlamaFamilyAdapter().shape(dense)
    total = sum(p.numel() for p in dense.parameters())
    assert front["sparsity_range"] == [0, 0.7] and front["params_range"] == [total_at_sparsity(shape, 0.7) / total, 1]
    assert front["front"] and all(total_at_sparsity(shape, 0.7) <= r["params"] <= total for r in front["front"])
    capsys.readouterr()
    for bad, message in (("half", "two sparsities"), ("0.9999,1", "--sparsity-range 0.9999,1 admits none of 1,000")):
        assert main(argv(tiny_run_inputs, tmp_path / bad.replace(",", "_"), "--sparsity-range", bad,
                         "--pick", "knee")) == 2
        assert message in one_line_error(capsys)
        assert not (tmp_path / bad.replace(",", "_")).exists()


@pytest.fixture(scope="module")
def finished_run(tiny_run_inputs, tmp_path_factory):
    """A finished three-trial run in a directory whose name holds URL characters."""
    out = tmp_path_factory.mktemp("finished") / "run?a=1#b%20c"
    assert main(argv(tiny_run_inputs, out, "--trials", "3")) == 0
    return out


def test_an_out_with_url_characters_holds_the_whole_run(finished_run):
    assert sorted(p.name for p in finished_run.parent.iterdir()) == [finished_run.name]
    assert {"study.db", "nas_run.json", "pareto.json"} <= {p.name for p in finished_run.iterdir()}
    assert states(trials(finished_run))["COMPLETE"] == 3


def test_a_resume_with_changed_settings_is_refused_naming_each(tiny_run_inputs, finished_run, tmp_path, capsys,
                                                               no_model_load):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = trials(out)
    changed = argv(tiny_run_inputs, out, "--trials", "3", "--multiple", "8", "data.calibration_blocks=3",
                   "eval.top_k=64")
    assert main(changed) == 2
    err = one_line_error(capsys)
    for setting in ("data.calibration_blocks: 2 -> 3", "eval.top_k: 1024 -> 64", "prune.multiple: 1 -> 8"):
        assert setting in err
    assert "--force" in err and "budget" not in err
    assert trials(out) == before


def test_changed_weights_under_the_same_model_path_are_refused(tiny_run_inputs, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_run_inputs / "dense", model)
    out = tmp_path / "n"
    assert main(argv(tiny_run_inputs, out, "--trials", "1", model=model)) == 0
    dense = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        dense.model.embed_tokens.weight.add_(0.01)
    dense.save_pretrained(model)
    capsys.readouterr()
    assert main(argv(tiny_run_inputs, out, "--trials", "1", model=model)) == 2
    err = one_line_error(capsys)
    assert "fingerprints.weights" in err and "data." not in err


@pytest.mark.parametrize("damage, named", [
    (lambda out: (out / "nas_run.json").write_text((out / "nas_run.json").read_text()[:40]), "nas_run.json"),
    (lambda out: (out / "study.db").write_bytes(os.urandom(4096)), "study.db"),
])
def test_a_corrupt_run_is_refused_in_one_line_and_force_starts_over(tiny_run_inputs, finished_run, tmp_path, capsys,
                                                                    damage, named):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    damage(out)
    assert main(argv(tiny_run_inputs, out, "--trials", "3")) == 2
    err = one_line_error(capsys)
    assert f"{out / named}" in err and "--force" in err
    assert main(argv(tiny_run_inputs, out, "--trials", "3", "--force", "--pick", "bogus")) == 2
    assert (out / "pareto.json").exists()  # a refused --force run leaves the old run alone
    capsys.readouterr()
    assert main(argv(tiny_run_inputs, out, "--trials", "2", "--force")) == 0
    assert states(trials(out))["COMPLETE"] == 2


def test_the_former_budget_spelling_still_runs_with_a_note(tiny_run_inputs, tmp_path, caplog):
    out = tmp_path / "run"
    assert main([a if a != "--trials" else "--budget" for a in argv(tiny_run_inputs, out, "--trials", "2")]) == 0
    assert "nas --budget is now --trials" in caplog.text
    assert states(trials(out)).get("COMPLETE") == 2
