"""Tiny random Llama models and token blocks shared by the training tests."""

from __future__ import annotations

import pytest
import torch
from evoprune_tests import tiny_gqa_llama
from transformers import LlamaForCausalLM

VOCAB = 99


build_llama = tiny_gqa_llama


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


@pytest.fixture(scope="session")
def recovery_inputs(tiny_run_inputs):
    """tiny_run_inputs plus `pruned/`: a heterogeneous export of its dense model (remote code + spec)."""
    import random

    from evoprune_tests import random_spec

    from evoprune.arch.export import export_checkpoint
    from evoprune.models import load_model

    root = tiny_run_inputs
    if not (root / "pruned").exists():
        dense = load_model(str(root / "dense"))
        spec = random_spec(dense.adapter.shape(dense.model), random.Random(1), keep_hidden=True, p_no_attention=0.0,
                           p_no_mlp=0.0)
        export_checkpoint(dense.adapter.slice(dense.model, spec), root / "pruned", tokenizer=dense.tokenizer,
                          spec=spec)
    return root
