"""sweep_latency: every workload of the grid measured, exact memory per workload, bad grids refused."""

from __future__ import annotations

import math

import pytest

from evoprune.config import ConfigError, load_config
from evoprune.errors import UserError
from evoprune.evaluation import Workload, sweep_latency, sweep_rows

FAST = dict(new_tokens=2, warmup=0, repeats=2)
# tiny_gqa_llama: vocab 99, hidden 32, 2 layers, 4 query heads of 8 dims over 2 KV groups, 37 neurons, untied
EMBEDDINGS = 2 * 99 * 32 + 32  # embed_tokens, lm_head, final norm
LAYER = 32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 37 + 2 * 32  # q, k+v, o, gate/up/down, two norms
ROTARY_BUFFERS = 2 * 4  # inv_freq and original_inv_freq, head_dim / 2 each


def kv_bytes(layers: int, batch: int, kv_heads: int, positions: int) -> int:
    return layers * 2 * batch * kv_heads * positions * 8 * 4  # K and V, head_dim 8, fp32


def test_two_by_two_sweep_gives_finite_positive_figures(make_llama):
    models = {"dense": make_llama(), "pruned": make_llama(num_key_value_heads=1, intermediate_size=20)}
    sweep = sweep_latency(models, batch_sizes=[2, 1], prompt_lens=[8, 4], **FAST)
    assert list(sweep) == [Workload(1, 4), Workload(2, 4), Workload(1, 8), Workload(2, 8)]
    rows = sweep_rows(sweep)
    assert len(rows) == 8
    for r in rows:
        for phase in ("prefill", "decode"):
            q1, q3 = r[f"{phase}_iqr"]
            assert math.isfinite(r[f"{phase}_tokens_per_s"]) and r[f"{phase}_tokens_per_s"] > 0
            assert q1 <= r[f"{phase}_tokens_per_s"] <= q3
            assert math.isfinite(r[f"{phase}_speedup"]) and r[f"{phase}_speedup"] > 0
        assert "cuda_peak_bytes" not in r  # CPU
    assert all(r["prefill_speedup"] == r["decode_speedup"] == 1.0 for r in rows if r["model"] == "dense")
    for workload, results in sweep.items():
        assert all((res.batch_size, res.prompt_len, res.new_tokens) == (workload.batch_size, workload.prompt_len, 2)
                   for res in results.values())


def test_memory_figures_are_the_exact_bytes_of_weights_and_kv_cache(make_llama):
    models = {"kv2": make_llama(), "kv1": make_llama(num_key_value_heads=1)}
    rows = sweep_rows(sweep_latency(models, batch_sizes=[1, 3], prompt_lens=[4, 6], **FAST))
    weights = {"kv2": 4 * (EMBEDDINGS + 2 * LAYER + ROTARY_BUFFERS),
               "kv1": 4 * (EMBEDDINGS + 2 * (LAYER - 2 * 32 * 8) + ROTARY_BUFFERS)}
    assert weights["kv2"] == 79_008
    for r in rows:
        kv = kv_bytes(2, r["batch_size"], {"kv2": 2, "kv1": 1}[r["model"]], r["prompt_len"] + 2)
        assert r["weights_bytes"] == weights[r["model"]]
        assert r["kv_cache_bytes"] == kv
        assert r["memory_bytes"] == weights[r["model"]] + kv


@pytest.mark.parametrize("grid, message", [
    (dict(batch_sizes=[], prompt_lens=[4]), "latency_batch_sizes must list at least one"),
    (dict(batch_sizes=[1], prompt_lens=[]), "latency_prompt_lens must list at least one"),
    (dict(batch_sizes=[1, 0], prompt_lens=[4]), "latency_batch_sizes must hold positive integers, got 0"),
    (dict(batch_sizes=[1], prompt_lens=[-4]), "latency_prompt_lens must hold positive integers, got -4"),
    (dict(batch_sizes=[1], prompt_lens=[4, 2047]), "2049 exceeds the 2048 positions"),
])
def test_bad_grid_is_refused_before_measuring(model, grid, message):
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(UserError, match=message) as info:
        sweep_latency({"m": model}, **grid, **FAST)
    assert "\n" not in str(info.value)
    assert calls == []


@pytest.mark.parametrize("override, message", [
    ("eval.latency_batch_sizes=[]", "eval.latency_batch_sizes must list at least one value"),
    ("eval.latency_prompt_lens=[128,0]", "eval.latency_prompt_lens must hold positive integers"),
    ("eval.warmup=-1", "eval.warmup must be >= 0"),
])
def test_bad_sweep_config_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_sweep_grid_defaults_to_no_sweep_and_fills_the_other_list():
    assert load_config(None, []).eval.sweep_grid() is None
    assert load_config(None, ["eval.latency_batch_sizes=[1,4]"]).eval.sweep_grid() == ([1, 4], [128])
    assert load_config(None, ["eval.latency_prompt_lens=[64]", "eval.batch_size=2"]).eval.sweep_grid() == ([2], [64])
