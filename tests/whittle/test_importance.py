"""Importance sorting: the permuted model computes the same logits, and its first units are the best."""

from __future__ import annotations

import random

import torch

from evoprune.arch.adapter import adapter_for
from evoprune.whittle.importance import Importance, importance_from_stats, permute_model
from evoprune.obs.calibration import collect_stats


def random_importance(shape, rng: random.Random) -> Importance:
    def perm(n):
        return rng.sample(range(n), n)
    return Importance([perm(layer.num_kv_heads) for layer in shape.layers],
                      [perm(layer.heads_per_group) for layer in shape.layers],
                      [perm(layer.intermediate_size) for layer in shape.layers],
                      perm(shape.hidden_size), perm(len(shape.layers)))


def test_any_permutation_preserves_logits(tiny_model):
    adapter = adapter_for(tiny_model.config)
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 9))
    with torch.no_grad():
        before = tiny_model(input_ids=ids).logits
        permute_model(tiny_model, adapter, random_importance(adapter.shape(tiny_model), random.Random(5)))
        after = tiny_model(input_ids=ids).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_sorted_model_puts_the_most_important_units_first(tiny_llama):
    adapter = adapter_for(tiny_llama.config)
    blocks = torch.randint(0, tiny_llama.config.vocab_size, (4, 16))
    imp = importance_from_stats(collect_stats(tiny_llama, adapter, blocks, 2, progress=False), adapter, tiny_llama)
    permute_model(tiny_llama, adapter, imp)
    stats = collect_stats(tiny_llama, adapter, blocks, 2, progress=False)
    for energy in stats.neuron_energy(adapter, tiny_llama):
        assert torch.all(energy[:-1] >= energy[1:] - 1e-6)
    hidden = sum(st.hidden_moments for st in stats.layers)
    assert torch.all(hidden[:-1] >= hidden[1:] - 1e-4 * hidden.max())
    assert sorted(imp.layer_rank) == list(range(len(stats.layers)))
