"""Whittle's importance space on Gemma: sorting preserves the function, and the hidden size stays whole."""

from __future__ import annotations

import random

import pytest
import torch

from arch.test_gemma import CASES, tokens
from evoprune_tests import random_spec
from evoprune.arch.adapter import adapter_for
from evoprune.whittle.importance import permute_model
from evoprune.whittle.space import SearchSpace
from evoprune.whittle.supernet.masked import MaskedSubnet

from .test_importance import random_importance


@pytest.mark.parametrize("case_id", ["gemma2-softcap", "gemma3-untied"])
def test_importance_permutation_preserves_gemma_logits(case_id):
    model = CASES[case_id].build()
    adapter = adapter_for(model.config)
    ids = tokens(length=12)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        permute_model(model, adapter, random_importance(adapter.shape(model), random.Random(5)))
        after = model(input_ids=ids).logits
    assert not torch.equal(model.model.layers[0].pre_feedforward_layernorm.weight,
                           CASES[case_id].build().model.layers[0].pre_feedforward_layernorm.weight)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_gemma_space_keeps_the_hidden_size_and_every_config_slices():
    model = CASES["gemma3-local-rope"].build()
    adapter = adapter_for(model.config)
    shape = adapter.shape(model)
    space = SearchSpace(shape, tuple(range(shape.num_layers)), per_layer=True)
    assert space.dimensions()["hidden"] == [shape.hidden_size]
    rng = random.Random(0)
    ids = tokens(length=12)
    for _ in range(3):
        config = space.sample(rng)
        assert space.to_spec(config).hidden is None
        with torch.no_grad():
            assert torch.isfinite(space.slice(model, adapter, config)(input_ids=ids).logits).all()


@pytest.mark.parametrize("case_id", ["gemma2-softcap", "gemma3-local-rope"])
def test_masked_view_equals_the_slice(case_id):
    """The supernet's hooks (masked heads, neurons and whole blocks) compute what the sliced Gemma computes."""
    model = CASES[case_id].build()
    adapter = adapter_for(model.config)
    shape = adapter.shape(model)
    rng = random.Random(7)
    ids = tokens(length=12)
    view = MaskedSubnet(model, adapter)
    with torch.no_grad():
        for _ in range(3):
            spec = random_spec(shape, rng, keep_hidden=True)
            view.use(spec)
            torch.testing.assert_close(model(input_ids=ids).logits, adapter.slice(model, spec)(input_ids=ids).logits,
                                       atol=1e-5, rtol=0)
    view.remove()
