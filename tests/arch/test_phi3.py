"""Phi-3 / Phi-3.5 (fused qkv_proj and gate_up_proj) through the adapter: the slicing and parameter-count tests
of the Llama family, run on tiny Phi-3 models (GQA; MHA with a sliding window and tied embeddings; partial RoPE
with longrope scaling)."""

from __future__ import annotations

import pytest
import torch

from evoprune_tests import CASES_BY_ID, PHI3_CASES
from evoprune.arch.adapter import adapter_for
from evoprune.arch.spec import LayerSpec, SubnetSpec

from .test_params import (  # noqa: F401  (collected again here, on Phi-3)
    test_dense_count_matches_formula,
    test_slice_of_slice_count,
    test_sliced_count_matches_formula,
)
from .test_slicing import (  # noqa: F401  (collected again here, on Phi-3)
    ATOL,
    logits,
    masked_copy,
    test_batch_generation_with_left_padding,
    test_cached_and_uncached_generation_agree_without_first_attention,
    test_eager_and_sdpa_attention_agree_with_padding,
    test_heterogeneous_specs_give_the_evoprune_class,
    test_hidden_slicing_composes,
    test_identity_spec_reproduces_dense_logits,
    test_random_spec_equals_masked_dense,
    test_streamed_layers_equal_the_sliced_model,
    test_whole_blocks_and_layers_removed_equal_masked_dense,
    tokens,
)


@pytest.fixture(params=PHI3_CASES, ids=[c.id for c in PHI3_CASES])
def tiny_case(request):
    return request.param


def test_fused_rows_follow_the_kept_heads_and_neurons():
    """The sliced qkv_proj / gate_up_proj hold exactly the kept rows of each part of the dense ones."""
    dense = CASES_BY_ID["phi3-gqa"].build()
    adapter = adapter_for(dense.config)
    shape = adapter.shape(dense)
    layer = LayerSpec.from_groups(shape.layers[0], [1], [1], [0, 5, 36])  # query head 3 with KV group 1
    spec = SubnetSpec(shape, [layer] * shape.num_layers).validate()
    sliced = adapter.slice(dense, spec)
    qkv, gate_up = dense.model.layers[0].self_attn.qkv_proj.weight, dense.model.layers[0].mlp.gate_up_proj.weight
    q, k, v = qkv[:32].view(4, 8, 32), qkv[32:48].view(2, 8, 32), qkv[48:].view(2, 8, 32)
    expected_qkv = torch.cat([q[3], k[1], v[1]])
    torch.testing.assert_close(sliced.model.layers[0].self_attn.qkv_proj.weight, expected_qkv, atol=0, rtol=0)
    expected_gate_up = torch.cat([gate_up[[0, 5, 36]], gate_up[[37, 42, 73]]])
    torch.testing.assert_close(sliced.model.layers[0].mlp.gate_up_proj.weight, expected_gate_up, atol=0, rtol=0)


def test_rope_settings_pass_through():
    """Partial rotary factor and longrope factors are the dense model's, also once heads are pruned (the stock
    config cannot hold longrope with fewer heads, so even a uniform result is the evoprune class)."""
    dense = CASES_BY_ID["phi3-gqa-partial-longrope"].build()
    adapter = adapter_for(dense.config)
    shape = adapter.shape(dense)
    spec = SubnetSpec(shape, [LayerSpec.from_groups(s, [0], [0, 1], list(range(20))) for s in shape.layers]).validate()
    assert spec.is_uniform()
    sliced = adapter.slice(dense, spec)
    assert type(sliced).__name__ == "EvoprunePhi3ForCausalLM"
    assert sliced.config.rope_parameters == dense.config.rope_parameters
    assert sliced.config.original_max_position_embeddings == dense.config.original_max_position_embeddings
    ids = tokens()
    torch.testing.assert_close(logits(sliced, ids), logits(masked_copy(dense, spec), ids), atol=ATOL, rtol=0)
    assert not torch.allclose(logits(sliced, ids), logits(dense, ids), atol=1e-3)


def test_uniform_spec_gives_the_stock_class():
    dense = CASES_BY_ID["phi3-gqa"].build()
    adapter = adapter_for(dense.config)
    shape = adapter.shape(dense)
    spec = SubnetSpec(shape, [LayerSpec.from_groups(s, [1], [0], list(range(0, 37, 3))) for s in shape.layers])
    sliced = adapter.slice(dense, spec.validate())
    assert type(sliced) is type(dense) and not getattr(sliced.config, "auto_map", None)
    assert adapter_for(sliced.config).shape(sliced) == spec.result_shape()
    ids = tokens()
    torch.testing.assert_close(logits(sliced, ids), logits(masked_copy(dense, spec), ids), atol=ATOL, rtol=0)
