"""The mip profile (the MIP start, no generations): a whole darwin run, exported, and a report that says which
genotype won the check against the uniform one."""

from __future__ import annotations

import json

from evoprune.darwinlm import pipeline as darwin
from darwinlm.test_pipeline import config


def test_a_run_with_no_generations_exports_the_mip_genotype(tiny_run_inputs, tmp_path):
    cfg = config(tiny_run_inputs, "search.first_parent=mip", "search.generations=0", "search.init_samples=0",
                 "search.replace_one_tokens=64", "search.fitness_pool=6")
    darwin.run(cfg, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["search"]["generations"] == 0 and metrics["search"]["first_parent"] == "mip"
    assert json.loads((tmp_path / "run" / "search" / "replace_one.json").read_text())["layers"]
    state = json.loads((tmp_path / "run" / "search" / "state.json").read_text())
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert spec["meta"]["genotype"] == state["parent"]
    report = (tmp_path / "run" / "report.md").read_text()
    check = metrics["search"]["first_parent_check"]
    assert check["winner"] in ("mip", "uniform") and check["mip_kl"] > 0 and check["uniform_kl"] > 0
    assert (check["winner"] == "mip") == (check["mip_kl"] <= check["uniform_kl"]) or check["stages"] > 1
    won = "won the check against the uniform genotype" if check["winner"] == "mip" else "lost the check"
    assert won in report and "No evolution followed" in report


def test_the_former_profile_name_still_works_with_a_note(caplog):
    from evoprune.config import load_config

    cfg = load_config(None, ["search.profile=quick"])
    assert cfg.search.profile == "mip" and cfg.search.resolved()["generations"] == 0
    assert "search.profile quick is now called mip" in caplog.text
    assert load_config(None, ["search.profile=evolve"]).search.resolved()["generations"] == 6


def test_runs_saved_under_the_former_name_resume_under_the_new_one():
    from evoprune.config import load_config

    def identity(profile):
        return darwin.search_config(load_config(None, [f"search.profile={profile}"]))

    assert identity("mip") == identity("quick") and identity("mip")["search"]["profile"] == "quick"
    assert identity("evolve") != identity("mip")
