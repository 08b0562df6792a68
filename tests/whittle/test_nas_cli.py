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
    out = tmp_path / "n"
    assert main(argv(tiny_run_inputs, out, "--pick", "params<=0.9")) == 0
    front = json.loads((out / "pareto.json").read_text())
    assert front["front"] and (out / "pareto.csv").read_text().startswith("trial,kl,params")
    picked = next(r for r in front["front"] if r["trial"] == front["picked_trial"])
    model = AutoModelForCausalLM.from_pretrained(out / "picks" / "params-le-0.9", trust_remote_code=True)
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

    assert main(argv(tiny_run_inputs, out, "--pick", "params<=0.9")) == 0  # resumes: nothing left to do
    assert trials(out) == first
    assert json.loads((out / "pareto.json").read_text()) == front

    assert main(argv(tiny_run_inputs, out, "--pick", "params<=0.9", "--trials", "8")) == 0  # a larger budget
    extended = trials(out)
    assert extended[:len(first)] == first and states(extended)["COMPLETE"] == 8
    front_rows = json.loads((out / "pareto.json").read_text())["front"]
    assert {r["trial"] for r in front_rows} <= set(range(8)) and front_rows != []
    capsys.readouterr()
    assert main(argv(tiny_run_inputs, tmp_path / "n2", "--pick", "params<=0.01", "--params-range", "full")) == 2
    assert "no configuration on the front meets params<=0.01" in one_line_error(capsys)


@pytest.mark.parametrize("extra, message", [
    (["--trials", "0"], "--trials must be a positive number"),
    (["--supernet-steps", "-5"], "--supernet-steps must be 0"),
    (["--pick", "bogus"], "--pick must be knee or params<=FRACTION"),
    (["--pick", "params<=abc"], "FRACTION must be a number"),
    (["--pick", "params<=1.5"], "FRACTION must be in (0, 1]"),
    (["--pick", "params<=0.5", "--objectives", "kl,loss"], "needs params among the objectives"),
    (["--objectives", "kl,speed"], "unknown: speed"),
    (["--objectives", "kl,params,kl"], "names kl twice"),
    (["--params-range", "0.9,0.5"], "needs 0 <= low < high"),
    (["--params-range", "0.5"], "takes two fractions LOW,HIGH"),
    (["--params-range", "all"], "or `full` for the whole space"),
    (["--pick", "params<=0.3"], "below the searched range 0.4-0.9"),  # the default range
    (["--pick", "params<=0.3", "--params-range", "0.35,1"], "below the searched range 0.35-1"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tiny_run_inputs, tmp_path, capsys, no_model_load,
                                                              extra, message):
    out = tmp_path / "n"
    assert main(argv(tiny_run_inputs, out, *extra)) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


def test_an_unknown_sampler_is_refused_before_anything_is_written(tmp_path, no_model_load):
    with pytest.raises(UserError, match="unknown sampler 'grid'"):
        nas_pipeline.run(RunConfig(), tmp_path / "n", ["kl", "params"], 4, sampler="grid")
    assert not (tmp_path / "n").exists()


def test_a_second_process_on_the_same_out_is_refused_naming_the_first(tiny_run_inputs, tmp_path, capsys,
                                                                        no_model_load):
    out = tmp_path / "n"
    with run_lock(out, "evoprune nas --out n (the first)"):
        assert main(argv(tiny_run_inputs, out)) == 2
    err = one_line_error(capsys)
    assert f"pid {os.getpid()}: evoprune nas --out n (the first)" in err and "another process" in err
    assert not out.exists()


def test_params_range_bounds_the_front_and_bad_ranges_are_one_line(tiny_run_inputs, tmp_path, capsys):
    assert main(argv(tiny_run_inputs, tmp_path / "n", "--params-range", "0.4,1")) == 0
    front = json.loads((tmp_path / "n" / "pareto.json").read_text())["front"]
    dense = AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "dense")
    total = sum(p.numel() for p in dense.parameters())
    assert front and all(0.4 * total <= r["params"] <= total for r in front)
    capsys.readouterr()
    for bad, message in (("half", "two fractions"), ("0,0.0001", "no configuration has between")):
        assert main(argv(tiny_run_inputs, tmp_path / bad.replace(",", "_"), "--params-range", bad)) == 2
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
