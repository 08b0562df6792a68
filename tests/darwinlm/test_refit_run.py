"""A darwin run with the re-fit: the exported model is the re-fitted one, with the spec of the run without it,
and the report says what the re-fit did; a run saved before the re-fit existed still resumes."""

from __future__ import annotations

import json

import torch

from evoprune.arch.spec import SubnetSpec
from evoprune.config import load_config
from evoprune.darwinlm import pipeline as darwin
from evoprune.models import load_model
from darwinlm.test_pipeline import config

MIP = ("search.first_parent=mip", "search.generations=0", "search.init_samples=0", "search.replace_one_tokens=64",
       "search.fitness_pool=6")


def _logits(folder, blocks):
    with torch.no_grad():
        return load_model(folder).model(input_ids=blocks).logits


def test_the_exported_model_is_the_refitted_one_with_the_same_spec(tiny_run_inputs, tmp_path):
    darwin.run(config(tiny_run_inputs, *MIP), tmp_path / "plain", progress=False)
    darwin.run(config(tiny_run_inputs, *MIP, "refit.target=self"), tmp_path / "refit", progress=False)
    plain, refit = (SubnetSpec.load(tmp_path / name / "spec.json") for name in ("plain", "refit"))
    assert plain.to_dict()["layers"] == refit.to_dict()["layers"]
    metrics = json.loads((tmp_path / "refit" / "metrics.json").read_text())
    record = metrics["refit"]
    assert record["target"] == "self" and record["modules"]
    assert all(m["error_after"] <= m["error_before"] + 1e-9 for m in record["modules"])
    assert "refit" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert "re-solved layer by layer" in (tmp_path / "refit" / "report.md").read_text()
    blocks = torch.randint(2, 50, (2, 16))
    assert not torch.allclose(_logits(tmp_path / "plain" / "model", blocks),
                              _logits(tmp_path / "refit" / "model", blocks), atol=1e-5)


def test_the_refit_is_part_of_a_run_but_not_of_its_search():
    default, refit = (load_config(None, overrides) for overrides in ([], ["refit.target=self"]))
    assert "refit" not in darwin.search_config(default)  # runs saved before it existed resume
    assert darwin.search_config(refit)["refit"]["target"] == "self"
    assert darwin.search_identity(default) == darwin.search_identity(refit)  # scores and caches are shared
