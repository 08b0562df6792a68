"""Tiny random models pruned into every special case of the GGUF export, saved as HF folders.

Each case is built the way evoprune builds pruned models (SubnetSpec -> adapter.slice ->
export_checkpoint) and carries a small byte-level BPE tokenizer, so the real export path (which
always writes the folder's own tokenizer) runs on it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from evoprune_tests import TINY_SIZES, TinyCase
from evoprune.arch.adapter import adapter_for
from evoprune.arch.export import export_checkpoint, register_pruned_classes
from evoprune.arch.spec import LayerSpec, SubnetSpec

VOCAB = 300  # 256 byte symbols + 3 special tokens + 41 merges
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = ["the quick brown fox jumps over the lazy dog", "a pruned model still has to speak",
        "hello world, hello llama", "numbers 123 456 and more words here"] * 20


def byte_level_tokenizer(vocab_size: int = VOCAB) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE tokenizer with `vocab_size` tokens, trained on a fixed text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[1], eos_token=SPECIALS[2],
                                   unk_token=SPECIALS[0], pad_token=SPECIALS[0])


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2 / Mistral style tokenizer: "\u2581" for spaces, BPE over characters, bytes for the rest."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for ch in "\u2581abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
    merges = [("\u2581", "t"), ("h", "e"), ("a", "t"), ("\u2581t", "he"), ("\u2581", "c"), ("\u2581c", "at"),
              ("\u2581", "s"), ("\u2581s", "at"), ("o", "n"), ("\u2581", "on")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@dataclass(frozen=True)
class GgufCase:
    """A tiny dense model and the spec that prunes it into one GGUF special case."""

    id: str
    dense: TinyCase
    spec: Callable  # (ModelShape) -> SubnetSpec
    what: str  # the special cases it covers


def _groups(layer, kv, slots=None, neurons=None):
    return LayerSpec.from_groups(layer, kv, slots, neurons)


def _llama_hetero(shape):
    """Per-layer heads; layer 0 without attention; attention-only; removed; MLP-only layers."""
    l0, l1, l2, l3, l4, l5 = shape.layers
    layers = [LayerSpec([], [], list(range(0, 37, 2))),  # no attention in layer 0
              _groups(l1, [0, 1], [1], [1, 5, 8, 20, 33]),  # 2 heads over 2 KV heads
              _groups(l2, [0, 1], None, []),  # attention only
              LayerSpec([], [], []),  # removed
              LayerSpec([], [], list(range(37))),  # MLP only
              _groups(l5, [1], [0, 1], list(range(30)))]  # 2 heads over 1 KV head
    return SubnetSpec(shape, layers, meta={"case": "llama-hetero"}).validate()


def _bias_tied_hidden(shape):
    """Biases everywhere, tied embeddings, hidden channels pruned 32 -> 24."""
    l0, l1, l2 = shape.layers
    layers = [LayerSpec([], [], list(range(10, 37))), _groups(l1, [1, 3], None, []), _groups(l2, [0, 2, 3], None)]
    hidden = sorted(random.Random(3).sample(range(32), 24))
    return SubnetSpec(shape, layers, hidden, meta={"case": "bias-tied-hidden"}).validate()


def _qwen2_tied(shape):
    """Qwen2 q/k/v biases, tied embeddings; an MLP-only middle layer and an attention-only last layer."""
    l0, l1, l2 = shape.layers
    layers = [_groups(l0, [0, 1], None, list(range(0, 37, 3))), LayerSpec([], [], list(range(25))),
              _groups(l2, [1], None, [])]
    return SubnetSpec(shape, layers, meta={"case": "qwen2-tied"}).validate()


def _uniform(shape):
    """The same sizes in every layer: exported as a stock checkpoint."""
    layers = [_groups(layer, [0], [0, 1], list(range(20))) for layer in shape.layers]
    return SubnetSpec(shape, layers, meta={"case": "uniform"}).validate()


def _mistral_hetero(shape):
    l0, l1, l2 = shape.layers
    layers = [_groups(l0, [1], [0], list(range(37))), _groups(l1, [0, 1], None, list(range(5, 30))),
              LayerSpec([], [], list(range(3, 37, 2)))]
    return SubnetSpec(shape, layers, meta={"case": "mistral"}).validate()


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

GGUF_CASES = [
    GgufCase("llama-hetero", TinyCase("llama6", LlamaConfig, LlamaForCausalLM,
                                      dict(vocab_size=VOCAB, num_hidden_layers=6, num_key_value_heads=2)),
             _llama_hetero, "per-layer q/kv heads, layer 0 without attention, attention-only, removed, MLP-only"),
    GgufCase("llama-bias-tied-hidden", TinyCase("llama-bias", LlamaConfig, LlamaForCausalLM,
                                                dict(vocab_size=VOCAB, num_key_value_heads=4, attention_bias=True,
                                                     mlp_bias=True, tie_word_embeddings=True)),
             _bias_tied_hidden, "attention and MLP biases, tied embeddings, hidden channels pruned"),
    GgufCase("qwen2-tied", TinyCase("qwen2", Qwen2Config, Qwen2ForCausalLM,
                                    dict(vocab_size=VOCAB, num_key_value_heads=2, tie_word_embeddings=True)),
             _qwen2_tied, "Qwen2 q/k/v biases, tied embeddings"),
    GgufCase("llama3-rope-uniform", TinyCase("llama3", LlamaConfig, LlamaForCausalLM,
                                             dict(vocab_size=VOCAB, num_key_value_heads=2,
                                                  rope_parameters=LLAMA3_ROPE)),
             _uniform, "Llama-3 RoPE scaling, untied, uniform (stock checkpoint)"),
    GgufCase("mistral-hetero", TinyCase("mistral", MistralConfig, MistralForCausalLM,
                                        dict(vocab_size=VOCAB, num_key_value_heads=2, sliding_window=None)),
             _mistral_hetero, "Mistral without sliding window"),
]
CASE_IDS = [c.id for c in GGUF_CASES]


def build_folder(case: GgufCase, out: Path, tokenizer=None) -> Path:
    """Slice the case's dense model by its spec and export it (with `tokenizer`) to `out`."""
    dense = case.dense.build()
    with torch.no_grad():  # O(1) activations, so attention is far from uniform and RoPE mistakes show in logits
        for p in dense.parameters():
            if p.dim() == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    adapter = adapter_for(dense.config)
    spec = case.spec(adapter.shape(dense))
    return export_checkpoint(adapter.slice(dense, spec), out, tokenizer=tokenizer, spec=spec)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return byte_level_tokenizer()


@pytest.fixture(scope="session")
def gguf_folders(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """Every case as an exported HF folder (built once per session)."""
    root = tmp_path_factory.mktemp("gguf_cases")
    torch.manual_seed(0)
    return {case.id: build_folder(case, root / case.id, tiny_tokenizer) for case in GGUF_CASES}


@torch.no_grad()
def transformers_logits(folder: Path, ids: list[int]) -> torch.Tensor:
    """Logits of the exported folder as transformers runs it (evoprune's registered classes). Shape (T, vocab)."""
    register_pruned_classes()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model(input_ids=torch.tensor([ids])).logits[0]


def eval_ids(n: int = 40, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(VOCAB) for _ in range(n)]


assert TINY_SIZES["max_position_embeddings"] >= 40  # eval_ids fits the tiny context
