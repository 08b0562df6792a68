"""A bf16 checkpoint asked for in float32: kept mapped as stored and run one converted module at a time
(`load_model(bounded=True)`) gives the numbers, exports, metrics and database of the float32 copy."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evoprune.baselines.pipeline import prune
from evoprune.config import load_config
from evoprune.darwinlm.pipeline import run as darwin_run
from evoprune.evaluation.blocks import next_token_logits
from evoprune.fingerprint import weights_fingerprint
from evoprune.models import load_model


@pytest.fixture(scope="module")
def bf16_source(tiny_run_inputs, tmp_path_factory):
    """The tiny run's dense model stored in bf16, with its tokenizer."""
    folder = tmp_path_factory.mktemp("bf16") / "dense"
    AutoModelForCausalLM.from_pretrained(tiny_run_inputs / "dense").to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_run_inputs / "dense").save_pretrained(folder)
    return folder


def test_bounded_model_is_mapped_and_gives_the_float32_copys_logits(bf16_source):
    copied = load_model(str(bf16_source), with_tokenizer=False).model
    bounded = load_model(str(bf16_source), with_tokenizer=False, bounded=True).model
    assert next(copied.parameters()).dtype == torch.float32
    assert next(bounded.parameters()).dtype == torch.bfloat16  # nothing copied
    ids = torch.randint(0, 80, (3, 40))
    with torch.inference_mode():
        assert torch.equal(next_token_logits(bounded, ids), next_token_logits(copied, ids))
    assert weights_fingerprint(bounded) == weights_fingerprint(copied)  # caches and databases are shared


def _config(source, tiny_run_inputs, bounded: bool, *more: str):
    return load_config(None, [f"model.source={source}", f"data.source={tiny_run_inputs / 'corpus.txt'}",
                              "data.seq_len=32", "data.calibration_blocks=4", "data.eval_blocks=3",
                              "data.batch_size=2", "eval.latency=false", "eval.unseen=false",
                              f"model.bounded={str(bounded).lower()}", *more])


def test_bounded_prune_exports_and_measures_what_the_copy_does(bf16_source, tiny_run_inputs, tmp_path):
    runs = {}
    for bounded in (False, True):
        out = prune(_config(bf16_source, tiny_run_inputs, bounded), tmp_path / str(bounded), progress=False)
        runs[bounded] = (load_file(out / "model" / "model.safetensors"), json.loads((out / "metrics.json").read_text()),
                         json.loads((out / "spec.json").read_text()))
    (w_copy, m_copy, spec_copy), (w_bound, m_bound, spec_bound) = runs[False], runs[True]
    assert spec_bound["layers"] == spec_copy["layers"]
    assert w_bound.keys() == w_copy.keys()
    for name, tensor in w_copy.items():
        assert tensor.dtype == torch.float32 and torch.equal(w_bound[name], tensor), name
    for model in ("dense", "pruned"):
        for figure in ("perplexity", "kl_to_teacher"):
            assert m_bound[model][figure] == m_copy[model][figure], (model, figure)


def test_bounded_database_holds_the_copys_levels(bf16_source, tiny_run_inputs, tmp_path):
    layers = {}
    for bounded in (False, True):
        cfg = _config(bf16_source, tiny_run_inputs, bounded, "database.store=run", "database.num_levels=3",
                      "search.fitness_pool=64")
        darwin_run(cfg, tmp_path / str(bounded), phase="database", progress=False)
        files = sorted((tmp_path / str(bounded) / "database").glob("layer_*.safetensors"))
        layers[bounded] = [load_file(f) for f in files]
    assert len(layers[True]) == len(layers[False]) == 4
    for bound, copy in zip(layers[True], layers[False]):
        assert bound.keys() == copy.keys()
        for name, tensor in copy.items():
            assert torch.equal(bound[name], tensor), name


def test_bounded_prune_skips_latency_with_a_note_and_the_copy_times_it(bf16_source, tiny_run_inputs, tmp_path):
    timed = ["eval.latency=true", "eval.repeats=1", "eval.warmup=1", "eval.new_tokens=2", "eval.prompt_len=4"]
    metrics = {}
    for bounded in (False, True):
        out = prune(_config(bf16_source, tiny_run_inputs, bounded, *timed), tmp_path / str(bounded), progress=False)
        metrics[bounded] = json.loads((out / "metrics.json").read_text())
    assert "decode_speedup" in metrics[False]["pruned"] and "latency_skipped" not in metrics[False]
    assert "decode_speedup" not in metrics[True]["pruned"] and "kept mapped" in metrics[True]["latency_skipped"]
