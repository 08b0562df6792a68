"""Model sources: local folders and the local HF cache, never the network."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from evoprune.errors import UserError
from evoprune.models import load_model, resolve_model_path


def test_model_id_in_local_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny" / "snapshots" / "0123456789abcdef"
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=24))
    model.save_pretrained(snapshot)
    (cache / "models--acme--tiny" / "refs").mkdir(parents=True)
    (cache / "models--acme--tiny" / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert resolve_model_path("acme/tiny") == snapshot
    loaded = load_model("acme/tiny", with_tokenizer=False)
    assert loaded.adapter.shape(loaded.model).num_layers == 1


def test_model_id_missing_from_cache_is_refused_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="not in the local HF cache"):
        resolve_model_path("acme/absent")


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        resolve_model_path(str(f))


def test_unknown_dtype(tmp_path):
    with pytest.raises(UserError, match="unknown dtype"):
        load_model(str(tmp_path), dtype="int3")


def test_corrupt_safetensors_is_a_user_error(tmp_path):
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=24))
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(UserError, match="cannot load weights"):
        load_model(str(tmp_path), with_tokenizer=False)
