"""`evoprune nas --objectives kl,params --trials N` with nothing else: local search over the database's levels (from
the MIP assemblies of its replace-one KLs) within sparsities 0.1-0.75 (fractions of the block parameters removed),
the pick the lowest-KL front point within the default size target prune.sparsity 0.5; `--sparsity-range full` the
whole space; `--sparsity` / `--target-params` choose the pick."""

from __future__ import annotations

import json
import shutil

import pytest

from evoprune.arch.llama import LlamaFamilyAdapter
from evoprune.arch.target import total_at_sparsity
from evoprune.cli import main
from evoprune.config import DEFAULT_SPARSITY_RANGE, load_config
from evoprune.errors import UserError
from evoprune.whittle.arguments import PickRule
from evoprune.whittle.pick import choose_pick

from .test_nas_cli import TINY, no_model_load, one_line_error, trials  # noqa: F401 (a fixture)

OBJECTIVES = ["kl", "params"]


def default_argv(root, out, *extra):
    """The issue's command, on the tiny model: no --sampler, --sparsity-range, --sparsity or --pick."""
    return ["nas", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out), "--quiet",
            "--objectives", "kl,params", "--trials", "6", *TINY, "eval.latency=false", *extra]


@pytest.fixture(scope="module")
def shape(tiny_run_inputs):
    from transformers import AutoModelForCausalLM

    return LlamaFamilyAdapter().shape(AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "dense"))


def dense_params(out) -> float:
    """The dense model's parameters: those of the search's largest configuration, saved in metrics.json."""
    return json.loads((out / "metrics.json").read_text())["full"]["params"]


def completed_params(out) -> list[float]:
    return [values[1] for _, state, _, values in trials(out) if state == "COMPLETE"]


def expected_pick(front: list[dict], most: int, default: bool = True) -> dict:
    """The target rule, written out: the lowest KL with at most `most` parameters, else (the default) the smallest."""
    fits = [r for r in front if r["params"] <= most]
    assert fits or default
    return min(fits, key=lambda r: r["kl"]) if fits else min(front, key=lambda r: r["params"])


def picked_row(out) -> dict:
    front = json.loads((out / "pareto.json").read_text())
    return next(r for r in front["front"] if r["trial"] == front["picked_trial"])


@pytest.fixture(scope="module")
def default_run(tiny_run_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "n"
    assert main(default_argv(tiny_run_inputs, out)) == 0
    return out


def test_the_default_run_searches_the_database_levels_inside_the_default_range(default_run, shape):
    settings = json.loads((default_run / "nas_run.json").read_text())
    assert settings["sparsity_range"] == [0.1, 0.75] and settings["sampler"] == "local"
    assert settings["prune"]["weights"] == "database" and settings["notes"]["weights"] == "the default"
    assert "default" in settings["notes"]["sparsity_range"] and settings["notes"]["sampler"] == "the default"
    assert settings["start"]["method"] == "mip" and settings["notes"]["start"] == "the default with weights database"
    sizes = completed_params(default_run)
    low, high = total_at_sparsity(shape, 0.75), total_at_sparsity(shape, 0.1)
    assert len(sizes) == 6 and all(low <= p <= high for p in sizes)
    # the search starts at the MIP assemblies inside the range: the one at the pick's size (0.5), the largest, the
    # smallest, then ever finer between them, so 6 trials span the range; the ones the budget did not reach stay
    # queued for a rerun with more trials
    states = [state for _, state, _, _ in trials(default_run)]
    assert states[:6] == ["COMPLETE"] * 6 and set(states[6:]) == {"WAITING"}
    start = json.loads((default_run / "pareto.json").read_text())["start_trials"]
    assert start["sparsities"][0] == 0.5 and sizes[0] <= total_at_sparsity(shape, 0.5)
    assert sizes[1] == max(sizes) and sizes[2] == min(sizes) <= total_at_sparsity(shape, 0.6)
    assert all("attention_0" in params for _, state, params, _ in trials(default_run) if state == "COMPLETE")


def test_the_default_pick_is_the_lowest_kl_within_the_default_target(default_run, shape):
    front = json.loads((default_run / "pareto.json").read_text())
    most = total_at_sparsity(shape, 0.5)  # prune.sparsity's default
    picked = picked_row(default_run)
    assert front["pick"] == "sparsity>=0.5" and front["pick_max_params"] == most
    assert front["sparsity_range"] == [0.1, 0.75]
    assert picked == expected_pick(front["front"], most)
    assert total_at_sparsity(shape, 0.75) <= picked["params"] <= total_at_sparsity(shape, 0.1)
    assert json.loads((default_run / "metrics.json").read_text())["pick"]["params"] == picked["params"]
    assert (default_run / "picks" / "sparsity-ge-0.5" / "config.json").exists()
    report = (default_run / "report.md").read_text()
    assert "Weights `database` (the default)" in report and "Sampler `local` (the default)" in report and "sub-networks of sparsity 0.1-0.75" in report
    assert "`--sparsity-range full` searches the whole space" in report
    assert f"Trial {picked['trial']}: " in report and front["pick_rule"] in report and front["pick_reason"] in report


@pytest.mark.parametrize("size, form, most", [
    (["--sparsity", "0.3"], "sparsity>=0.3", lambda shape: total_at_sparsity(shape, 0.3)),
    (["--sparsity", "0.6"], "sparsity>=0.6", lambda shape: total_at_sparsity(shape, 0.6)),
    (["--target-params", "24000"], "params<=24000", lambda shape: 24000),
])
def test_sparsity_and_target_params_choose_the_pick_of_a_finished_search(tiny_run_inputs, default_run, shape,
                                                                         tmp_path, size, form, most):
    """The size is not a setting of the study: a rerun with another one resumes it and picks again."""
    out = tmp_path / "run"
    shutil.copytree(default_run, out)
    before = trials(out)
    assert main(default_argv(tiny_run_inputs, out, *size)) == 0
    assert trials(out) == before
    front = json.loads((out / "pareto.json").read_text())
    assert front["pick"] == form and front["pick_max_params"] == most(shape)
    fits = [r for r in front["front"] if r["params"] <= most(shape)]
    assert fits, "the tiny study has a front point within every target tested here"
    assert picked_row(out) == min(fits, key=lambda r: r["kl"])
    assert (out / "picks" / form.replace(">=", "-ge-").replace("<=", "-le-") / "config.json").exists()


@pytest.mark.usefixtures("no_model_load")
def test_a_default_run_resumes_under_its_explicit_settings_and_refuses_other_ones(tiny_run_inputs, default_run,
                                                                                  tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(default_run, out)
    before = trials(out)
    for changed, named in ((["--sparsity-range", "full"], "sparsity_range: [0.1, 0.75] -> None"),
                           (["--sparsity-range", "0.2,0.75"], "sparsity_range: [0.1, 0.75] -> [0.2, 0.75]"),
                           (["--sampler", "nsga2"], "sampler: 'local' -> 'nsga2'")):
        assert main(default_argv(tiny_run_inputs, out, *changed)) == 2
        assert named in one_line_error(capsys)
    assert trials(out) == before


def test_the_same_settings_given_explicitly_resume_the_default_run(tiny_run_inputs, default_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(default_run, out)
    before = trials(out)
    assert main(default_argv(tiny_run_inputs, out, "--sampler", "local", "--sparsity-range", "0.1,0.75",
                             "--pick", "knee")) == 0
    assert trials(out) == before
    front = json.loads((out / "pareto.json").read_text())
    assert front["pick"] == "knee" and front["pick_max_params"] is None and (out / "picks" / "knee").is_dir()


def test_sparsity_range_full_searches_the_whole_space(tiny_run_inputs, tmp_path, shape):
    out = tmp_path / "n"
    assert main(default_argv(tiny_run_inputs, out, "--sparsity-range", "full", "--trials", "3")) == 0
    settings = json.loads((out / "nas_run.json").read_text())
    assert settings["sparsity_range"] is None and settings["notes"]["sparsity_range"] == "the whole space"
    total = dense_params(out)
    sizes = completed_params(out)
    # the MIP assemblies: the one at the pick's size (0.5), then the largest and the smallest
    assert sizes[0] <= total_at_sparsity(shape, 0.5) and sizes[1] == max(sizes) <= total and sizes[2] == min(sizes)
    assert "over the whole space" in (out / "report.md").read_text()
    assert main(default_argv(tiny_run_inputs, out, "--sparsity-range", "0,1", "--trials", "3")) == 0  # the same


@pytest.mark.parametrize("fields, expected", [
    ([], DEFAULT_SPARSITY_RANGE),
    (["nas.objectives=[kl,latency]"], None),  # the default range is one of parameters only
    (["nas.sparsity_range=full"], None),
    (["nas.sparsity_range=' full'"], None),
    (["nas.sparsity_range=[0,1]"], None),
    (["nas.sparsity_range=0,1"], None),
    (["nas.sparsity_range=0.2,0.6"], (0.2, 0.6)),
    (["nas.sparsity_range=[0.2,0.6]"], (0.2, 0.6)),
    (["nas.sparsity_range=[0.2,0.6]", "nas.objectives=[kl,flops]"], (0.2, 0.6)),
])
def test_the_searched_range(fields, expected):
    assert load_config(None, fields).nas.searched_range() == expected


@pytest.mark.parametrize("fields, expected", [
    ([], "target"),
    (["nas.objectives=[kl,latency]"], "knee"),  # without params, the knee (as before)
    (["nas.pick=knee"], "knee"),
    (["nas.pick=target", "nas.objectives=[loss,params,latency]"], "target"),
])
def test_the_pick_rule(fields, expected):
    assert load_config(None, fields).nas.pick_rule() == expected


# choose_pick on a hand-made front: rows (kl, params) of a model of 100 parameters
ROWS = [{"trial": 0, "kl": 0.1, "params": 95}, {"trial": 1, "kl": 1.0, "params": 70},
        {"trial": 2, "kl": 2.0, "params": 55}, {"trial": 3, "kl": 3.0, "params": 45},
        {"trial": 4, "kl": 9.0, "params": 5}]


def choose(rule: PickRule, bounds, rows=ROWS) -> int:
    front = list(range(len(rows)))
    chosen, _ = choose_pick(rows, front, rule, "kl", OBJECTIVES, {i: r["params"] for i, r in enumerate(rows)}, 100.0,
                            bounds)
    return rows[chosen]["trial"]


def test_the_pick_takes_the_lowest_kl_within_the_target():
    assert choose(PickRule("sparsity>=0.5", 60, default=True), (0.4, 0.9)) == 2
    assert choose(PickRule("params<=50", 50), (0.4, 0.9)) == 3


def test_the_pick_never_leaves_the_searched_range():
    assert choose(PickRule("params<=100", 100), (0.4, 0.9)) == 1  # trial 0 has the lowest KL but 0.95
    assert choose(PickRule("knee"), None) != choose(PickRule("knee"), (0.4, 0.9))
    assert 3 >= choose(PickRule("knee"), (0.4, 0.9)) >= 1


def test_the_default_pick_falls_back_to_the_smallest_point_but_a_named_one_is_refused():
    larger = [r for r in ROWS if r["params"] > 50]
    assert choose(PickRule("params<=50", 50, default=True), (0.4, 0.9), larger) == 2
    with pytest.raises(UserError, match=r"no configuration on the front meets params<=50 \(at most 50 parameters\); "
                                        r"the smallest has 55 \(0.55 of the dense parameters\)"):
        choose(PickRule("params<=50", 50), (0.4, 0.9), larger)


def test_the_help_states_the_defaults(capsys):
    assert main(["nas", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    low, high = DEFAULT_SPARSITY_RANGE
    assert f"default {low:g},{high:g} with params among the objectives" in text and "`full` (or 0,1)" in text
    assert "default target with params among the objectives, else knee" in text and "{local,nsga2,random}" in text
    assert "{database,importance}" in text and "default database (nas.weights)" in text
    assert "--params-range" not in text and "--budget" not in text and "params<=" not in text  # former spellings
