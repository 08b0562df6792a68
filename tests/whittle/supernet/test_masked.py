"""The masked view of a sub-network computes exactly what the physically sliced model computes."""

from __future__ import annotations

import random

import pytest
import torch

from evoprune_tests import random_spec
from evoprune.arch.adapter import adapter_for
from evoprune.whittle.supernet.masked import MaskedSubnet


@pytest.mark.parametrize("keep_hidden", [True, False])
def test_masked_view_equals_the_slice(tiny_model, keep_hidden):
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    rng = random.Random(7)
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 10))
    view = MaskedSubnet(tiny_model, adapter)
    with torch.no_grad():
        dense = tiny_model(input_ids=ids).logits
        for _ in range(3):
            spec = random_spec(shape, rng, keep_hidden=keep_hidden)
            view.use(spec)
            masked = tiny_model(input_ids=ids).logits
            sliced = adapter.slice(tiny_model, spec)(input_ids=ids).logits
            torch.testing.assert_close(masked, sliced, atol=1e-5, rtol=0)
            assert (masked - dense).abs().max() > 1e-4  # a real sub-network, not the dense model
        view.use(None)
        torch.testing.assert_close(tiny_model(input_ids=ids).logits, dense, atol=0, rtol=0)
    view.remove()
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(input_ids=ids).logits, dense, atol=0, rtol=0)


def test_gradients_reach_only_kept_units(tiny_llama):
    adapter = adapter_for(tiny_llama.config)
    shape = adapter.shape(tiny_llama)
    spec = random_spec(shape, random.Random(3), keep_hidden=True, p_no_attention=0, p_no_mlp=0)
    view = MaskedSubnet(tiny_llama, adapter)
    view.use(spec)
    tiny_llama(input_ids=torch.randint(0, 50, (1, 8))).logits.sum().backward()
    down = adapter.mlp_output(adapter.layers(tiny_llama)[0]).weight.grad
    removed = sorted(set(range(shape.layers[0].intermediate_size)) - set(spec.layers[0].neurons))
    assert removed and torch.all(down[:, removed] == 0)
    assert down[:, spec.layers[0].neurons].abs().sum() > 0
