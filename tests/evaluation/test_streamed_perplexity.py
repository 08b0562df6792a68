"""Perplexity layer by layer equals the whole-model perplexity; `eval.streamed` picks it when weights crowd RAM."""

from __future__ import annotations

import importlib
import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from evoprune_tests import CASES_BY_ID, TINY_CASES, random_spec
from evoprune.arch.adapter import adapter_for
from evoprune.arch.export import export_checkpoint
from evoprune.arch.spec import LayerSpec
from evoprune.config import ConfigError, EvalConfig, load_config
from evoprune.evaluation.latency import weights_nbytes
from evoprune.evaluation.perplexity import mean_nll, perplexity
from evoprune.evaluation.streamed_choice import mem_available, use_streamed
from evoprune.evaluation.streamed_perplexity import streamed_mean_nll, streamed_perplexity
from evoprune.evaluation.suite import evaluate_models
from evoprune.models import load_model

perplexity_module = importlib.import_module("evoprune.evaluation.perplexity")  # not the function
REL = 1e-6  # float32 rounding of two summation orders


def blocks(n: int = 5, seq_len: int = 24, vocab: int = 99) -> torch.Tensor:
    """Longer than the tiny sliding windows (4), so full and sliding masks differ."""
    return torch.randint(0, vocab, (n, seq_len), generator=torch.Generator().manual_seed(0))


def without_first_attention(shape, seed: int):
    """A heterogeneous spec whose layer 0 lost its attention block (so layer 0's mask is no other layer's)."""
    spec = random_spec(shape, random.Random(seed), keep_hidden=True, p_no_attention=0, p_no_mlp=0)
    spec.layers[0] = LayerSpec([], [], spec.layers[0].neurons)
    return spec.validate()


@pytest.mark.parametrize("case", TINY_CASES, ids=[c.id for c in TINY_CASES])
def test_streamed_perplexity_of_the_dense_model_equals_the_whole_model(case):
    model, tokens = case.build(), blocks()
    whole = mean_nll(model, tokens, batch_size=2)
    assert streamed_mean_nll(model, tokens, batch_size=2) == pytest.approx(whole, rel=REL)
    assert streamed_perplexity(model, tokens, batch_size=2) == pytest.approx(perplexity(model, tokens, 2), rel=REL)


@pytest.mark.parametrize("case_id", ["llama-gqa", "mistral-gqa-sw4", "qwen2-mha-hybrid-sw4", "qwen3-mha-tied"])
@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_perplexity_of_a_sliced_spec_equals_the_sliced_model(case_id, seed):
    dense, tokens = CASES_BY_ID[case_id].build(), blocks()
    adapter = adapter_for(dense.config)
    spec = without_first_attention(adapter.shape(dense), seed) if seed else \
        random_spec(adapter.shape(dense), random.Random(seed), keep_hidden=True)
    whole = mean_nll(adapter.slice(dense, spec), tokens, batch_size=2)
    assert streamed_mean_nll(dense, tokens, batch_size=2, spec=spec) == pytest.approx(whole, rel=REL)


@pytest.mark.parametrize("case_id", ["llama-mha-bias-tied", "qwen2-mha-hybrid-sw4"])
def test_a_pruned_heterogeneous_checkpoint_loaded_from_disk_runs_its_own_layers(case_id, tmp_path):
    dense = CASES_BY_ID[case_id].build()
    adapter = adapter_for(dense.config)
    spec = without_first_attention(adapter.shape(dense), 3)
    export_checkpoint(adapter.slice(dense, spec), tmp_path / "pruned", spec=spec)
    pruned = load_model(str(tmp_path / "pruned"), with_tokenizer=False).model
    assert adapter.attention(adapter.layers(pruned)[0]) is None
    tokens = blocks()
    whole = mean_nll(pruned, tokens, batch_size=2)
    assert streamed_mean_nll(pruned, tokens, batch_size=2) == pytest.approx(whole, rel=REL)


def test_a_bf16_mapped_model_computed_in_fp32(tmp_path):
    AutoModelForCausalLM.from_config(CASES_BY_ID["qwen2-mha-hybrid-sw4"].config()).to(torch.bfloat16) \
        .save_pretrained(tmp_path / "bf16")
    model = load_model(str(tmp_path / "bf16"), dtype="bfloat16", with_tokenizer=False).model
    tokens = blocks()
    whole = mean_nll(model, tokens, batch_size=2)
    assert streamed_mean_nll(model, tokens, batch_size=2) == pytest.approx(whole, rel=1e-5)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # converted a module at a time, restored


def test_a_tiny_logits_chunk_gives_the_same_result():
    model, tokens = CASES_BY_ID["qwen3-gqa"].build(), blocks()
    one_position = streamed_mean_nll(model, tokens, batch_size=2, chunk_bytes=1)
    assert one_position == pytest.approx(streamed_mean_nll(model, tokens, batch_size=2), rel=REL)


def test_every_batch_goes_through_a_layer_before_the_next_layer():
    model = CASES_BY_ID["llama-gqa"].build()
    adapter = adapter_for(model.config)
    order = []
    for i, layer in enumerate(adapter.layers(model)):
        layer.register_forward_hook(lambda *_, i=i: order.append(i))
    streamed_mean_nll(model, blocks(n=5), batch_size=2)
    assert order == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 3 batches of <= 2 blocks, 3 layers


def test_mean_nll_takes_the_streamed_path_on_request(monkeypatch):
    calls = []
    monkeypatch.setattr(perplexity_module, "streamed_mean_nll", lambda *a, **k: calls.append(a) or 1.0)
    assert mean_nll(CASES_BY_ID["llama-gqa"].build(), blocks(), streamed=True) == 1.0 and len(calls) == 1


def test_the_auto_rule_streams_when_the_weights_exceed_half_of_the_available_memory():
    model = CASES_BY_ID["llama-gqa"].build()
    weights = weights_nbytes(model)
    assert use_streamed("auto", model, available=2 * weights + 1024) is False
    assert use_streamed("auto", model, available=2 * weights - 1024) is True
    assert use_streamed(True, model, available=10**15) is True
    assert use_streamed(False, model, available=1) is False


def test_mem_available_reads_proc_meminfo(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       24684288 kB\nMemAvailable:   22134712 kB\n")
    assert mem_available(tmp_path / "meminfo") == 22134712 * 1024
    assert mem_available(tmp_path / "missing") is None


def test_eval_streamed_setting_defaults_to_auto_and_is_validated(tmp_path):
    assert load_config(None, []).eval.streamed == "auto"
    assert load_config(None, ["eval.streamed=true"]).eval.streamed is True
    assert load_config(None, ["eval.streamed=false"]).eval.streamed is False
    with pytest.raises(ConfigError, match="eval.streamed must be true, false or auto, got 'sometimes'"):
        load_config(None, ["eval.streamed=sometimes"])
    older = tmp_path / "config.yaml"  # a run directory's config.yaml from before the setting existed
    older.write_text("eval:\n  top_k: 64\n  unseen: false\n")
    assert load_config(older).eval.streamed == "auto"


@pytest.mark.parametrize("streamed", [True, False])
def test_evaluate_models_measures_the_same_perplexity_either_way(streamed, monkeypatch):
    calls = []
    real = perplexity_module.streamed_mean_nll
    monkeypatch.setattr(perplexity_module, "streamed_mean_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, tokens = CASES_BY_ID["qwen2-mha-hybrid-sw4"].build(), blocks()
    rows = evaluate_models({"m": model}, tokens, None, EvalConfig(latency=False, streamed=streamed), batch_size=2,
                           progress=False)
    assert len(calls) == int(streamed)
    assert rows["m"]["perplexity"] == pytest.approx(perplexity(model, tokens, 2), rel=REL)


def test_evoprune_eval_reports_the_same_perplexities_layer_by_layer(tiny_run_inputs, tmp_path):
    from evoprune.evaluation.run import evaluate

    metrics = {}
    for streamed in ("true", "false"):
        cfg = load_config(None, [f"data.source={tiny_run_inputs / 'corpus.txt'}", "data.seq_len=32",
                                 "data.eval_blocks=4", "eval.latency=false", "eval.unseen_blocks=1",
                                 f"eval.streamed={streamed}"])
        out = evaluate(cfg, str(tiny_run_inputs / "dense"), tmp_path / streamed, progress=False)
        metrics[streamed] = json.loads((out / "metrics.json").read_text())["model"]
    streamed, whole = metrics["true"], metrics["false"]
    assert streamed["perplexity"] == pytest.approx(whole["perplexity"], rel=REL)
    assert streamed["unseen_perplexity"].keys() == whole["unseen_perplexity"].keys()
    assert any(v is not None for v in whole["unseen_perplexity"].values())
    for domain, value in whole["unseen_perplexity"].items():
        assert streamed["unseen_perplexity"][domain] == pytest.approx(value, rel=REL)
