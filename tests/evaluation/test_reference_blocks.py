"""Reference rows (a darwin run's uniform genotype) are measured on the first `eval.reference_blocks` held-out
blocks: the same figures as measuring that model alone on those blocks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from evoprune.config import ConfigError, EvalConfig, load_config
from evoprune.evaluation.suite import evaluate_models
from evoprune.evaluation.teacher import TeacherCache
from evoprune.models import load_model

CFG = EvalConfig(latency=False, reference_blocks=2)


def _models(path):
    dense = load_model(str(path)).model
    other = load_model(str(path)).model
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(0.5)
    return dense, other


def test_reference_rows_use_the_first_blocks_and_equal_a_run_on_them(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    dense, other = _models(tiny_run_inputs / "dense")
    blocks = torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(0))
    teacher = TeacherCache.build(dense, blocks, tmp_path / "teacher-all", top_k=16, batch_size=2, progress=False)
    rows = evaluate_models({"dense": dense, "reference": other}, blocks, teacher, CFG, 2, False,
                           heldout_only=frozenset({"reference"}))
    first = TeacherCache.build(dense, blocks[:2], tmp_path / "teacher-first", top_k=16, batch_size=2, progress=False)
    alone = evaluate_models({"reference": other}, blocks[:2], first, CFG, 2, False)["reference"]
    assert rows["reference"]["heldout_blocks"] == 2 and rows["dense"]["heldout_blocks"] == 4
    assert rows["reference"]["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-6)
    assert rows["reference"]["kl_to_teacher"] == pytest.approx(alone["kl_to_teacher"], rel=1e-5)
    whole = evaluate_models({"reference": other}, blocks, teacher, dataclasses.replace(CFG, reference_blocks=None),
                            2, False, heldout_only=frozenset({"reference"}))["reference"]
    assert whole["heldout_blocks"] == 4 and whole["perplexity"] != pytest.approx(alone["perplexity"], rel=1e-6)


def test_reference_blocks_must_be_positive():
    with pytest.raises(ConfigError, match="eval.reference_blocks must be positive"):
        load_config(None, ["eval.reference_blocks=0"])
    assert load_config(None, ["eval.reference_blocks=null"]).eval.reference_blocks is None
