"""The quick profile's MIP start with no generations: a whole darwin run, exported and reported."""

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
    assert "MIP assembly" in (tmp_path / "run" / "report.md").read_text()
