"""`evoprune nas --objectives kl,params --trials N` with nothing else: local search inside 0.4-0.9 of the dense
parameters, the pick the lowest-KL front point with at most 0.6 of them; `--params-range full` the whole space."""

from __future__ import annotations

import json
import shutil

import pytest

from evoprune.cli import main
from evoprune.errors import UserError
from evoprune.whittle.arguments import (DEFAULT_PARAMS_RANGE, DEFAULT_TARGET, PickRule, default_pick, params_range_arg,
                                    pick_rule)
from evoprune.whittle.pick import choose_pick

from .test_nas_cli import TINY, no_model_load, one_line_error, trials  # noqa: F401 (a fixture)

OBJECTIVES = ["kl", "params"]


def default_argv(root, out, *extra):
    """The issue's command, on the tiny model: no --sampler, --params-range or --pick."""
    return ["nas", "--model", str(root / "dense"), "--data", str(root / "corpus.txt"), "--out", str(out), "--quiet",
            "--objectives", "kl,params", "--trials", "6", *TINY, "eval.latency=false", *extra]


def dense_params(out) -> float:
    """The dense model's parameters: those of the search's largest configuration, saved in metrics.json."""
    return json.loads((out / "metrics.json").read_text())["full"]["params"]


def completed_params(out) -> list[float]:
    return [values[1] for _, state, _, values in trials(out) if state == "COMPLETE"]


def expected_default_pick(front: list[dict], total: float) -> dict:
    """The default rule, written out: the lowest KL with at most 0.6 of the parameters, else the smallest."""
    fits = [r for r in front if r["params"] <= 0.6 * total]
    return min(fits, key=lambda r: r["kl"]) if fits else min(front, key=lambda r: r["params"])


@pytest.fixture(scope="module")
def default_run(tiny_run_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "n"
    assert main(default_argv(tiny_run_inputs, out)) == 0
    return out


def test_the_default_run_searches_only_inside_the_default_range(default_run):
    settings = json.loads((default_run / "nas_run.json").read_text())
    assert settings["params_range"] == [0.4, 0.9] and settings["sampler"] == "local"
    assert "default" in settings["notes"]["params_range"] and settings["notes"]["sampler"] == "the default"
    total = dense_params(default_run)
    sizes = completed_params(default_run)
    assert len(sizes) == 6 and all(0.4 * total <= p <= 0.9 * total for p in sizes)
    # the local search starts at the largest and the smallest configuration: both lie outside, unevaluated
    assert [state for _, state, _, _ in trials(default_run)][:2] == ["PRUNED", "PRUNED"]


def test_the_default_pick_is_the_rules_choice_inside_the_range(default_run):
    front = json.loads((default_run / "pareto.json").read_text())
    total = dense_params(default_run)
    picked = next(r for r in front["front"] if r["trial"] == front["picked_trial"])
    assert front["pick"] == "params<=0.6" and front["params_range"] == [0.4, 0.9]
    assert picked == expected_default_pick(front["front"], total)
    assert 0.4 * total <= picked["params"] <= 0.9 * total
    assert json.loads((default_run / "metrics.json").read_text())["pick"]["params"] == picked["params"]
    assert (default_run / "picks" / "params-le-0.6" / "config.json").exists()
    report = (default_run / "report.md").read_text()
    assert "Sampler `local` (the default)" in report and "0.4-0.9 of the dense parameters" in report
    assert "`--params-range full` searches the whole space" in report
    assert f"Trial {picked['trial']}: " in report and front["pick_rule"] in report and front["pick_reason"] in report


@pytest.mark.usefixtures("no_model_load")
def test_a_default_run_resumes_under_its_explicit_settings_and_refuses_other_ones(tiny_run_inputs, default_run,
                                                                                  tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(default_run, out)
    before = trials(out)
    for changed, named in ((["--params-range", "full"], "params_range: [0.4, 0.9] -> None"),
                           (["--params-range", "0.5,0.9"], "params_range: [0.4, 0.9] -> [0.5, 0.9]"),
                           (["--sampler", "nsga2"], "sampler: 'local' -> 'nsga2'")):
        assert main(default_argv(tiny_run_inputs, out, *changed)) == 2
        assert named in one_line_error(capsys)
    assert trials(out) == before


def test_the_same_settings_given_explicitly_resume_the_default_run(tiny_run_inputs, default_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(default_run, out)
    before = trials(out)
    assert main(default_argv(tiny_run_inputs, out, "--sampler", "local", "--params-range", "0.4,0.9",
                             "--pick", "knee")) == 0
    assert trials(out) == before
    front = json.loads((out / "pareto.json").read_text())
    assert front["pick"] == "knee" and (out / "picks" / "knee").is_dir()


def test_params_range_full_searches_the_whole_space(tiny_run_inputs, tmp_path):
    out = tmp_path / "n"
    assert main(default_argv(tiny_run_inputs, out, "--params-range", "full", "--trials", "3")) == 0
    settings = json.loads((out / "nas_run.json").read_text())
    assert settings["params_range"] is None and settings["notes"]["params_range"] == "the whole space"
    total = dense_params(out)
    assert completed_params(out)[:2] == [total, min(completed_params(out))]  # the largest, then the smallest
    assert completed_params(out)[1] < 0.4 * total
    assert "over the whole space" in (out / "report.md").read_text()
    assert main(default_argv(tiny_run_inputs, out, "--params-range", "0,1", "--trials", "3")) == 0  # the same


@pytest.mark.parametrize("text, objectives, expected", [
    (None, OBJECTIVES, DEFAULT_PARAMS_RANGE),
    (None, ["kl", "latency"], None),  # the default range is one of parameters only
    ("full", OBJECTIVES, None),
    (" full", OBJECTIVES, None),
    ("0,1", OBJECTIVES, None),
    ("0.5,0.8", OBJECTIVES, (0.5, 0.8)),
    ("0.5,0.8", ["kl", "flops"], (0.5, 0.8)),
])
def test_params_range_argument(text, objectives, expected):
    assert params_range_arg(text, objectives) == expected


@pytest.mark.parametrize("params_range, objectives, expected", [
    (DEFAULT_PARAMS_RANGE, OBJECTIVES, PickRule("params<=0.6", 0.6, default=True)),
    (None, OBJECTIVES, PickRule("params<=0.6", 0.6, default=True)),
    ((0.7, 1.0), OBJECTIVES, PickRule("params<=0.85", 0.85, default=True)),  # the middle of a range without 0.6
    ((0.2, 0.5), OBJECTIVES, PickRule("params<=0.35", 0.35, default=True)),
    (None, ["kl", "latency"], PickRule("knee", default=True)),
])
def test_the_default_pick_rule(params_range, objectives, expected):
    assert default_pick(objectives, params_range) == expected
    assert pick_rule(None, objectives, params_range) == expected


# choose_pick on a hand-made front: rows (kl, params) of a model of 100 parameters
ROWS = [{"trial": 0, "kl": 0.1, "params": 95}, {"trial": 1, "kl": 1.0, "params": 70},
        {"trial": 2, "kl": 2.0, "params": 55}, {"trial": 3, "kl": 3.0, "params": 45},
        {"trial": 4, "kl": 9.0, "params": 5}]


def choose(rule: PickRule, params_range, rows=ROWS) -> int:
    front = list(range(len(rows)))
    chosen, _ = choose_pick(rows, front, rule, "kl", OBJECTIVES, {i: r["params"] for i, r in enumerate(rows)}, 100.0,
                            params_range)
    return rows[chosen]["trial"]


def test_the_pick_takes_the_lowest_kl_within_the_fraction():
    assert choose(PickRule("params<=0.6", 0.6, default=True), (0.4, 0.9)) == 2
    assert choose(PickRule("params<=0.5", 0.5), (0.4, 0.9)) == 3


def test_the_pick_never_leaves_the_searched_range():
    assert choose(PickRule("params<=1", 1.0), (0.4, 0.9)) == 1  # trial 0 has the lowest KL but 0.95
    assert choose(PickRule("knee"), None) != choose(PickRule("knee"), (0.4, 0.9))
    assert 3 >= choose(PickRule("knee"), (0.4, 0.9)) >= 1


def test_the_default_pick_falls_back_to_the_smallest_point_but_a_named_one_is_refused():
    larger = [r for r in ROWS if r["params"] > 50]
    assert choose(PickRule("params<=0.5", 0.5, default=True), (0.4, 0.9), larger) == 2
    with pytest.raises(UserError, match=r"no configuration on the front meets params<=0.5; the smallest has 0.55"):
        choose(PickRule("params<=0.5", 0.5), (0.4, 0.9), larger)


def test_the_help_states_the_defaults(capsys):
    assert main(["nas", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    low, high = DEFAULT_PARAMS_RANGE
    assert f"default {low:g},{high:g} with params among the objectives" in text and "`full` (or 0,1)" in text
    assert f"default params<={DEFAULT_TARGET:g}" in text and "{local,nsga2,random}" in text
