"""Tiny random Llama models and token blocks shared by the evaluation tests."""

from __future__ import annotations

import copy

import pytest
import torch
from evoprune_tests import tiny_gqa_llama
from transformers import LlamaForCausalLM

VOCAB = 99


tiny_llama = tiny_gqa_llama


@pytest.fixture
def make_llama():
    """The `tiny_llama` factory, for tests that need variants (dropout, fewer KV heads, tied embeddings)."""
    return tiny_llama


@pytest.fixture
def exact_kl():
    """The `exact_kl_per_position` reference."""
    return exact_kl_per_position


@pytest.fixture
def model() -> LlamaForCausalLM:
    return tiny_llama(seed=0)


@pytest.fixture
def teacher() -> LlamaForCausalLM:
    """A tiny Llama whose LM head is scaled up so its next-token distributions are peaked, like a trained LM's."""
    dense = tiny_llama(seed=0)
    with torch.no_grad():
        dense.lm_head.weight.mul_(30.0)
    return dense


@pytest.fixture
def student(teacher) -> LlamaForCausalLM:
    """The teacher with every weight perturbed by 10% noise: close to it but not equal, like a pruned model."""
    noisy = copy.deepcopy(teacher)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in noisy.parameters():
            param.add_(0.1 * param.std() * torch.randn(param.shape, generator=generator))
    return noisy


@pytest.fixture
def blocks() -> torch.Tensor:
    """5 blocks of 16 token ids, [5, 16] int64 (odd count so the last batch is partial)."""
    return torch.randint(0, VOCAB, (5, 16), generator=torch.Generator().manual_seed(2))


def exact_kl_per_position(teacher_model, student_model, blocks: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) over the full vocabulary from both models' logits, [n_blocks, seq_len - 1] float64."""
    with torch.no_grad():
        p = teacher_model(input_ids=blocks).logits[:, :-1].double().log_softmax(-1)
        q = student_model(input_ids=blocks).logits[:, :-1].double().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)
