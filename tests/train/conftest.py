"""Tiny random Llama models and token blocks shared by the training tests."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 99


def build_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """The tiny GQA Llama (vocab 99, hidden 32, 2 layers, 4 heads over 2 KV groups, 37 neurons), seeded, eval mode."""
    settings = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=37)
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()


def make_blocks(n_blocks: int, seq_len: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n_blocks, seq_len), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_llama():
    return build_llama


@pytest.fixture
def llama() -> LlamaForCausalLM:
    return build_llama()


@pytest.fixture
def blocks_of():
    """Factory: `blocks_of(n_blocks, seq_len, seed=1)` -> random token ids [n_blocks, seq_len]."""
    return make_blocks


@pytest.fixture
def blocks() -> torch.Tensor:
    """6 blocks of 16 tokens."""
    return make_blocks(6, 16)
