"""Unseen-text perplexity: per domain, equal to a direct computation; the held-back source apart."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evoprune.data.unseen import UnseenDomain
from evoprune.evaluation.unseen import unseen_metrics
from evoprune_tests import tiny_gqa_llama


def direct_perplexity(model, blocks: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1]
    return math.exp(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1)).item())


def domain(name: str, blocks: torch.Tensor | None, heldback: bool = False) -> UnseenDomain:
    return UnseenDomain(name, "genre", "origin", heldback, blocks)


def test_each_domain_is_the_perplexity_of_its_blocks_and_the_mean_leaves_out_the_held_back_one():
    model = tiny_gqa_llama()
    blocks = {name: torch.randint(0, 99, (3, 16), generator=torch.Generator().manual_seed(i))
              for i, name in enumerate(["news", "math", "austen"])}
    domains = [domain("news", blocks["news"]), domain("math", blocks["math"]), domain("gone", None),
               domain("austen", blocks["austen"], heldback=True)]
    metrics = unseen_metrics(model, domains, batch_size=2)
    expected = {name: direct_perplexity(model, b) for name, b in blocks.items()}
    assert metrics["unseen_perplexity"] == pytest.approx({"news": expected["news"], "math": expected["math"],
                                                          "gone": None})
    assert metrics["unseen_ppl_mean"] == pytest.approx(math.sqrt(expected["news"] * expected["math"]))
    assert metrics["heldback_perplexity"] == pytest.approx(expected["austen"])
    assert len(set(expected.values())) == 3  # different blocks, different figures: the mapping is tested


def test_no_held_back_domain_reports_none():
    metrics = unseen_metrics(tiny_gqa_llama(), [domain("news", torch.randint(0, 99, (1, 8)))], batch_size=1)
    assert metrics["heldback_perplexity"] is None and metrics["unseen_ppl_mean"] is not None
