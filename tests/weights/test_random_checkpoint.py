"""Random-init checkpoints: stock transformers loads them, they are reproducible, sharded and written shard by shard."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from evoprune.errors import UserError
from evoprune.weights import random_checkpoint as rc
from evoprune.weights.random_checkpoint import (
    LLAMA_3_1_8B,
    LLAMA_3_2_1B,
    build_config,
    cached_random_checkpoint,
    parameter_shapes,
    random_tensor,
    with_layers,
    write_random_checkpoint,
)

# Small enough that the tiny model below (about 37 KB in bf16) needs several shards.
SHARD_BYTES = 8000


def tiny_config(**overrides) -> LlamaConfig:
    settings = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
                "num_key_value_heads": 2, "intermediate_size": 37, "head_dim": 8}
    return LlamaConfig(**{**settings, **overrides})


def read_tensors(folder) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as weights:
            tensors.update({name: weights.get_tensor(name) for name in weights.keys()})
    return tensors


@pytest.fixture
def sharded(tmp_path):
    return write_random_checkpoint(tiny_config(), tmp_path / "ckpt", max_shard_bytes=SHARD_BYTES, seed=3)


def test_stock_transformers_loads_it_in_bf16(sharded):
    model = AutoModelForCausalLM.from_pretrained(sharded)
    assert model.dtype == torch.bfloat16
    stored = read_tensors(sharded)
    state = model.state_dict()
    assert set(stored) == set(state)
    for name, tensor in stored.items():
        assert tensor.dtype == torch.bfloat16
        assert torch.equal(state[name], tensor), name
    assert json.loads((sharded / "config.json").read_text())["dtype"] == "bfloat16"
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 99) and torch.isfinite(logits).all()


def test_shards_and_index_are_as_transformers_writes_them(sharded):
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) >= 3
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    assert not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    stored = {}
    for shard in shards:
        with safe_open(sharded / shard, "pt") as weights:
            assert weights.metadata() == {"format": "pt"}
            stored.update({name: (shard, weights.get_tensor(name)) for name in weights.keys()})
    assert index["weight_map"] == {name: shard for name, (shard, _) in stored.items()}
    assert list(index["weight_map"]) == sorted(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for _, t in stored.values())
    assert index["metadata"]["total_parameters"] == sum(t.numel() for _, t in stored.values())


def test_same_seed_same_tensors_other_seed_other_tensors(sharded, tmp_path):
    again = read_tensors(write_random_checkpoint(tiny_config(), tmp_path / "again", max_shard_bytes=SHARD_BYTES,
                                                 seed=3))
    first = read_tensors(sharded)
    assert set(again) == set(first)
    assert all(torch.equal(first[name], again[name]) for name in first)
    # The values do not depend on how the tensors are split into shards.
    single = read_tensors(write_random_checkpoint(tiny_config(), tmp_path / "single", seed=3))
    assert all(torch.equal(first[name], single[name]) for name in first)
    other = read_tensors(write_random_checkpoint(tiny_config(), tmp_path / "other", seed=4))
    assert not torch.equal(first["model.layers.0.self_attn.q_proj.weight"],
                           other["model.layers.0.self_attn.q_proj.weight"])


def test_values_look_like_a_fresh_model(sharded):
    tensors = read_tensors(sharded)
    assert all(torch.all(t == 1) for name, t in tensors.items() if "norm" in name)
    weight = tensors["model.embed_tokens.weight"].float()
    assert abs(weight.std().item() - 0.02) < 0.002 and abs(weight.mean().item()) < 0.002
    assert not torch.equal(tensors["model.layers.0.mlp.up_proj.weight"], tensors["model.layers.1.mlp.up_proj.weight"])


def test_biases_are_zero(tmp_path):
    out = write_random_checkpoint(tiny_config(attention_bias=True), tmp_path / "bias")
    biases = {name: t for name, t in read_tensors(out).items() if name.endswith("bias")}
    assert biases and all(torch.all(t == 0) for t in biases.values())


def test_large_tensors_are_drawn_in_row_chunks(monkeypatch):
    whole = random_tensor("w", (64, 48), 0.02, 0, torch.bfloat16)
    monkeypatch.setattr(rc, "CHUNK_BYTES", 48 * 4 * 5)  # 5 rows per chunk, the last chunk shorter
    chunked = random_tensor("w", (64, 48), 0.02, 0, torch.bfloat16)
    assert chunked.dtype == torch.bfloat16 and chunked.shape == (64, 48)
    assert torch.isfinite(chunked.float()).all() and abs(chunked.float().std().item() - 0.02) < 0.003
    assert torch.equal(chunked, random_tensor("w", (64, 48), 0.02, 0, torch.bfloat16))
    assert whole.shape == chunked.shape


def test_each_shard_is_written_and_released_before_the_next(tmp_path, monkeypatch):
    import safetensors.torch

    saved = []
    real_save = safetensors.torch.save_file

    def recording_save(tensors, file, metadata=None):
        saved.append(sum(t.numel() * t.element_size() for t in tensors.values()))
        real_save(tensors, file, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", recording_save)
    write_random_checkpoint(tiny_config(), tmp_path / "ckpt", max_shard_bytes=SHARD_BYTES)
    assert len(saved) >= 3 and max(saved) <= SHARD_BYTES


@pytest.mark.parametrize("tied", [True, False])
def test_tied_and_untied_embeddings(tmp_path, tied):
    out = write_random_checkpoint(tiny_config(tie_word_embeddings=tied), tmp_path / "ckpt",
                                  max_shard_bytes=SHARD_BYTES)
    stored = read_tensors(out)
    assert ("lm_head.weight" in stored) is not tied
    model = AutoModelForCausalLM.from_pretrained(out)
    same = torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    assert same is tied
    assert torch.equal(model.model.embed_tokens.weight, stored["model.embed_tokens.weight"])


def test_existing_folder_is_refused_without_force(sharded):
    before = read_tensors(sharded)
    with pytest.raises(UserError, match="already exists.*--force"):
        write_random_checkpoint(tiny_config(), sharded, max_shard_bytes=SHARD_BYTES, seed=5)
    assert all(torch.equal(before[n], t) for n, t in read_tensors(sharded).items())
    write_random_checkpoint(tiny_config(), sharded, seed=5, force=True)
    assert (sharded / "model.safetensors").is_file() and not (sharded / "model.safetensors.index.json").exists()
    assert not list(sharded.parent.glob(".ckpt*"))


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rc, "_write_shard", fail)
    with pytest.raises(KeyboardInterrupt):
        write_random_checkpoint(tiny_config(), tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_config_is_not_modified(tmp_path):
    config = tiny_config()
    before = config.to_dict()
    write_random_checkpoint(config, tmp_path / "ckpt")
    assert config.to_dict() == before


def test_tokenizer_files_are_copied(tmp_path, tiny_run_inputs):
    dense = AutoConfig.from_pretrained(tiny_run_inputs / "dense")
    out = write_random_checkpoint(dense, tmp_path / "ckpt", tokenizer_from=tiny_run_inputs / "dense")
    assert (out / "tokenizer.json").is_file()
    assert AutoTokenizer.from_pretrained(out)("w1 w2").input_ids == \
        AutoTokenizer.from_pretrained(tiny_run_inputs / "dense")("w1 w2").input_ids


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="floating torch dtype"):
        write_random_checkpoint(tiny_config(), tmp_path / "a", dtype=torch.int8)
    with pytest.raises(UserError, match="max_shard_bytes"):
        write_random_checkpoint(tiny_config(), tmp_path / "a", max_shard_bytes=0)
    with pytest.raises(UserError, match="tokenizer folder not found"):
        write_random_checkpoint(tiny_config(), tmp_path / "a", tokenizer_from=tmp_path / "absent")
    assert not (tmp_path / "a").exists()


def test_real_configs_have_the_published_parameter_counts():
    # Llama 3.2 1B: 1,235,814,400 parameters (tied); Llama 3.1 8B: 8,030,261,248.
    for config_dict, count in ((LLAMA_3_2_1B, 1_235_814_400), (LLAMA_3_1_8B, 8_030_261_248)):
        config = build_config(config_dict)
        assert config.rope_parameters["rope_type"] == "llama3"
        assert config.rope_parameters["rope_theta"] == 500000.0
        _, shapes = parameter_shapes(config)
        assert sum(math.prod(shape) for _, shape in shapes) == count
    assert build_config(LLAMA_3_1_8B).rope_parameters["factor"] == 8.0
    assert build_config(LLAMA_3_2_1B).rope_parameters["factor"] == 32.0


def test_with_layers_keeps_the_width():
    four = with_layers(LLAMA_3_1_8B, 4)
    assert four["num_hidden_layers"] == 4 and LLAMA_3_1_8B["num_hidden_layers"] == 32
    assert four["hidden_size"] == 4096 and four["rope_parameters"] == LLAMA_3_1_8B["rope_parameters"]
    _, shapes = parameter_shapes(build_config(four))
    layers = {int(m.group(1)) for name, _ in shapes if (m := re.match(r"model\.layers\.(\d+)\.", name))}
    assert layers == {0, 1, 2, 3}
    with pytest.raises(UserError, match="positive integer"):
        with_layers(LLAMA_3_1_8B, 0)


def test_build_config_needs_a_known_model_type():
    with pytest.raises(UserError, match="no model_type"):
        build_config({"hidden_size": 8})
    with pytest.raises(UserError, match="cannot build a 'nonsense' config"):
        build_config({"model_type": "nonsense"})


def tiny_dict(**overrides) -> dict:
    return {"model_type": "llama", **tiny_config().to_diff_dict(), **overrides}


def test_cache_writes_once_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    first = cached_random_checkpoint("tiny", tiny_dict(), max_shard_bytes=SHARD_BYTES)
    assert first.parent == tmp_path / "cache" / "random-checkpoints" and first.name.startswith("tiny-")
    assert AutoModelForCausalLM.from_pretrained(first).dtype == torch.bfloat16

    def no_write(*args, **kwargs):
        raise AssertionError("a complete cached checkpoint was written again")

    monkeypatch.setattr(rc, "write_random_checkpoint", no_write)
    assert cached_random_checkpoint("tiny", tiny_dict(), max_shard_bytes=SHARD_BYTES) == first
    monkeypatch.undo()
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    assert cached_random_checkpoint("tiny", tiny_dict(), seed=1, max_shard_bytes=SHARD_BYTES) != first
    assert cached_random_checkpoint("tiny", tiny_dict(vocab_size=98), max_shard_bytes=SHARD_BYTES) != first
    assert cached_random_checkpoint("tiny", tiny_dict(), dtype=torch.float32, max_shard_bytes=SHARD_BYTES) != first


def test_cache_rewrites_an_incomplete_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    folder = cached_random_checkpoint("tiny", tiny_dict(), max_shard_bytes=SHARD_BYTES)
    before = read_tensors(folder)
    sorted(folder.glob("model-*.safetensors"))[1].unlink()
    assert cached_random_checkpoint("tiny", tiny_dict(), max_shard_bytes=SHARD_BYTES) == folder
    after = read_tensors(folder)
    assert set(after) == set(before) and all(torch.equal(before[n], after[n]) for n in before)


def test_cache_name_must_be_a_folder_name(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOPRUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="plain folder name"):
        cached_random_checkpoint("../escape", tiny_dict())
