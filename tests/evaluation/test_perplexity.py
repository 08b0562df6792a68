"""mean_nll / perplexity against a by-hand computation on a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evoprune.errors import UserError
from evoprune.evaluation import mean_nll, perplexity

VOCAB = 99


def reference_nll(model, blocks: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1].double()
    return float(F.cross_entropy(logits.reshape(-1, VOCAB), blocks[:, 1:].reshape(-1)))


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_mean_nll_matches_reference_for_any_batch_size(model, blocks, batch_size):
    assert mean_nll(model, blocks, batch_size=batch_size) == pytest.approx(reference_nll(model, blocks), abs=1e-5)


def test_mean_nll_weights_every_token_equally(model, blocks):
    per_block = [mean_nll(model, blocks[i:i + 1]) for i in range(len(blocks))]
    assert mean_nll(model, blocks) == pytest.approx(sum(per_block) / len(per_block), abs=1e-6)


def test_perplexity_is_exp_of_mean_nll(model, blocks):
    assert perplexity(model, blocks, batch_size=3) == pytest.approx(math.exp(mean_nll(model, blocks)), rel=1e-6)


def test_runs_in_eval_mode_and_restores_training_flag(make_llama, blocks):
    dropout_model = make_llama(attention_dropout=0.5)
    expected = reference_nll(dropout_model.eval(), blocks)
    dropout_model.train()
    assert mean_nll(dropout_model, blocks) == pytest.approx(expected, abs=1e-5)
    assert dropout_model.training


def test_bf16_model_is_scored_in_fp32(make_llama, blocks):
    bf16 = make_llama().to(torch.bfloat16)
    assert mean_nll(bf16, blocks) == pytest.approx(reference_nll(bf16, blocks), abs=1e-4)


@pytest.mark.parametrize("bad, problem", [
    (torch.zeros(2, 8), "integer"),
    (torch.zeros(8, dtype=torch.long), "shape"),
    (torch.zeros(2, 1, dtype=torch.long), "shape"),
    (torch.full((2, 8), VOCAB, dtype=torch.long), "vocabulary"),
    (torch.full((2, 8), -1, dtype=torch.long), "negative"),
])
def test_bad_blocks_raise_user_error(model, bad, problem):
    with pytest.raises(UserError, match=problem):
        mean_nll(model, bad)


def test_bad_batch_size_raises_user_error(model, blocks):
    with pytest.raises(UserError, match="batch_size"):
        mean_nll(model, blocks, batch_size=0)
