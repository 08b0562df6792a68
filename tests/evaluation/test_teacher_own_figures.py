"""A teacher cache keeps the teacher's own per-block NLL, so the dense row of a run costs no held-out pass."""

from __future__ import annotations

import pytest
import torch

from evoprune.config import EvalConfig
from evoprune.evaluation import suite
from evoprune.evaluation.heldout import heldout_figures
from evoprune.evaluation.suite import evaluate_models, teacher_for
from evoprune.evaluation.teacher import TeacherCache
from evoprune.evaluation.teacher_subset import TeacherSubset
from evoprune.models import load_model

CFG = EvalConfig(latency=False, top_k=8)


@pytest.fixture
def setting(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    dense = load_model(str(tiny_run_inputs / "dense")).model
    blocks = torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(1))
    return dense, blocks


def test_kept_nll_equals_a_measured_pass(setting):
    dense, blocks = setting
    teacher = teacher_for(dense, "dense", blocks, CFG, 2, False)
    measured = heldout_figures(dense, blocks, teacher, batch_size=3)
    assert torch.allclose(teacher.teacher_nll(), measured.per_block_nll, rtol=1e-6)
    subset = TeacherSubset(teacher, blocks, [2, 0])
    assert torch.equal(subset.teacher_nll(), teacher.teacher_nll()[[2, 0]])


def test_dense_row_reads_the_kept_nll_and_other_models_are_measured(setting, monkeypatch):
    dense, blocks = setting
    other = load_model(str(dense.name_or_path)).model
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(0.5)
    teacher = teacher_for(dense, "dense", blocks, CFG, 2, False)
    passes = []
    original = suite.heldout_figures
    monkeypatch.setattr(suite, "heldout_figures", lambda model, *a, **k: passes.append(model) or original(model, *a, **k))
    rows = evaluate_models({"dense": dense, "other": other}, blocks, teacher, CFG, 2, False,
                           unchanged=frozenset({"dense", "other"}))
    assert passes == [other]  # the dense model's held-out figures came from its cache
    measured = heldout_figures(dense, blocks, teacher, batch_size=2).row()
    assert rows["dense"]["kl_to_teacher"] == 0.0
    assert rows["dense"]["perplexity"] == pytest.approx(measured["perplexity"], rel=1e-6)
    assert rows["other"]["kl_to_teacher"] > 0


def test_a_cache_at_another_temperature_keeps_no_nll(setting, tmp_path, monkeypatch):
    dense, blocks = setting
    path = tmp_path / "hot.safetensors"
    TeacherCache.build(dense, blocks, path, top_k=8, temperature=2.0)  # other temperatures keep no NLL
    hot = TeacherCache.load(path, blocks)
    assert hot.teacher_nll() is None and suite.teacher_own_figures(dense, hot) is None
