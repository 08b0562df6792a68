"""The dense model's quality figures are measured once per weights and blocks, and never reused for others."""

from __future__ import annotations

import torch

from evoprune.config import EvalConfig
from evoprune.evaluation import suite
from evoprune.evaluation.suite import evaluate_models
from evoprune.models import load_model

CFG = EvalConfig(latency=False)


def test_unchanged_models_are_measured_once_and_others_every_time(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    measured = []
    original = suite.mean_nll
    monkeypatch.setattr(suite, "mean_nll", lambda model, *a, **k: measured.append(model) or original(model, *a, **k))
    dense = load_model(str(tiny_run_inputs / "dense")).model
    other = load_model(str(tiny_run_inputs / "dense")).model
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.mul_(0.5)
    blocks = torch.randint(0, 50, (4, 32), generator=torch.Generator().manual_seed(0))
    first = evaluate_models({"dense": dense, "other": other}, blocks, None, CFG, 2, False, unchanged=frozenset({"dense"}))
    again = evaluate_models({"dense": dense, "other": other}, blocks, None, CFG, 2, False, unchanged=frozenset({"dense"}))
    assert measured == [dense, other, other] and again == first  # the second dense row came from the cache
    evaluate_models({"other": other}, blocks, None, CFG, 2, False, unchanged=frozenset({"other"}))
    assert measured[-1] is other  # other weights: another key, measured
    evaluate_models({"dense": dense}, blocks[:2], None, CFG, 2, False, unchanged=frozenset({"dense"}))
    evaluate_models({"dense": dense}, blocks, None, CFG, 1, False, unchanged=frozenset({"dense"}))
    assert measured[-2:] == [dense, dense]  # other blocks, other batch size: measured
    with torch.no_grad():
        dense.model.layers[1].self_attn.q_proj.weight.add_(0.1)  # the same object, changed in place
    changed = evaluate_models({"dense": dense}, blocks, None, CFG, 2, False, unchanged=frozenset({"dense"}))
    assert measured[-1] is dense and changed["dense"]["perplexity"] != first["dense"]["perplexity"]
