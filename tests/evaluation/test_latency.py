"""measure_latency / compare_latency: sane figures, exact memory accounting, round-robin order."""

from __future__ import annotations

import math

import pytest
import torch

from evoprune.errors import UserError
from evoprune.evaluation import LatencyResult, cache_nbytes, compare_latency, measure_latency, weights_nbytes

FAST = dict(prompt_len=8, new_tokens=4, warmup=1, repeats=3)


def test_figures_are_finite_and_positive(model):
    result = measure_latency(model, batch_size=2, **FAST)
    assert isinstance(result, LatencyResult)
    for runs, median, (q1, q3) in ((result.prefill_runs, result.prefill_tokens_per_s, result.prefill_iqr),
                                   (result.decode_runs, result.decode_tokens_per_s, result.decode_iqr)):
        assert len(runs) == 3
        assert all(math.isfinite(r) and r > 0 for r in runs)
        assert q1 <= median <= q3
    assert (result.batch_size, result.prompt_len, result.new_tokens) == (2, 8, 4)
    assert (result.device, result.dtype) == ("cpu", "float32")
    assert result.to_dict()["kv_cache_bytes"] == result.kv_cache_bytes


def test_kv_cache_bytes_scale_with_kv_heads_and_layers(make_llama):
    models = {"kv2": make_llama(), "kv1": make_llama(num_key_value_heads=1),
              "kv2_1layer": make_llama(num_hidden_layers=1)}
    results = compare_latency(models, batch_size=3, **FAST)
    head_dim, positions, fp32 = 32 // 4, 8 + 4, 4
    assert results["kv2"].kv_cache_bytes == 2 * 2 * 3 * 2 * positions * head_dim * fp32  # layers, K+V, batch, heads
    assert results["kv1"].kv_cache_bytes * 2 == results["kv2"].kv_cache_bytes
    assert results["kv2_1layer"].kv_cache_bytes * 2 == results["kv2"].kv_cache_bytes


def test_weights_bytes_count_parameters_and_buffers_once(make_llama):
    untied = make_llama()
    expected = sum(p.numel() * p.element_size() for p in untied.parameters())
    expected += sum(b.numel() * b.element_size() for b in untied.buffers())
    assert measure_latency(untied, **FAST).weights_bytes == expected == weights_nbytes(untied)
    tied = make_llama(tie_word_embeddings=True)
    assert weights_nbytes(tied) == expected - 99 * 32 * 4
    assert weights_nbytes(untied.to(torch.bfloat16)) < expected


def test_models_are_interleaved_round_robin(make_llama):
    models = {"a": make_llama(), "b": make_llama(seed=1)}
    prefills: list[str] = []
    for name, m in models.items():
        m.register_forward_pre_hook(
            lambda module, args, kwargs, name=name: prefills.append(name) if kwargs["input_ids"].shape[1] > 1 else None,
            with_kwargs=True)
    compare_latency(models, prompt_len=8, new_tokens=2, warmup=1, repeats=3)
    assert prefills == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_eval_mode_is_restored(model):
    model.train()
    measure_latency(model, **FAST)
    assert model.training


def test_cache_nbytes_reads_legacy_tuples_and_counts_shared_tensors_once():
    k, v = torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8, dtype=torch.float16)
    assert cache_nbytes(((k, v), (k, v))) == k.nbytes + v.nbytes


@pytest.mark.parametrize("bad", [dict(repeats=0), dict(new_tokens=0), dict(batch_size=0), dict(warmup=-1),
                                 dict(prompt_len=4000)])
def test_bad_workload_raises_user_error(model, bad):
    with pytest.raises(UserError):
        measure_latency(model, **{**FAST, **bad})


def test_no_models_raises_user_error():
    with pytest.raises(UserError, match="at least one"):
        compare_latency({})
