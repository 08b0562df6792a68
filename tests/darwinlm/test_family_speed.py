"""A family's front carries every size's llama.cpp speed, timed beside the dense model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from evoprune.api import darwin  # noqa: E402

from serving.conftest import VOCAB, byte_level_tokenizer  # noqa: E402
from .test_family import TINY  # noqa: E402


def test_the_front_has_llamacpp_speeds_of_every_size_and_the_dense_model(tiny_run_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48, head_dim=8, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "dense")
    byte_level_tokenizer().save_pretrained(tmp_path / "dense")  # llama.cpp takes BPE tokenizers
    dense, corpus = str(tmp_path / "dense"), str(tiny_run_inputs / "corpus.txt")
    overrides = {**TINY, "eval.latency": True, "eval.repeats": 2, "eval.warmup": 1, "eval.prompt_len": 8,
                 "eval.new_tokens": 4, "eval.threads": 1}
    darwin(dense, tmp_path / "family", sparsity=[0.3, 0.6], data=corpus, overrides=overrides, progress=False)
    saved = json.loads((tmp_path / "family" / "front.json").read_text())
    assert saved["dense"]["llamacpp_decode_speedup"] == pytest.approx(1.0)
    for row in saved["front"]:
        assert row["llamacpp_decode_tokens_per_s"] > 0 and row["llamacpp_decode_speedup"] > 0
        assert (tmp_path / "family" / row["folder"] / "model-gguf" / "model.gguf").stat().st_size > 0
    assert "llamacpp_decode_speedup" in (tmp_path / "family" / "front.csv").read_text().splitlines()[0]
