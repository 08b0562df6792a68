"""OLMo-2 (post-norms, q/k norms over all heads) through the adapter: the slicing and parameter-count tests of
the Llama family, run on tiny OLMo-2 models (GQA; MHA with biases and tied embeddings). The masked dense
reference restricts the q/k norms to the kept heads, as the sliced model's are."""

from __future__ import annotations

import pytest
import torch

from evoprune_tests import CASES_BY_ID, OLMO2_CASES
from evoprune.arch.adapter import adapter_for
from evoprune.arch.spec import LayerSpec, SubnetSpec

from .test_params import (  # noqa: F401  (collected again here, on OLMo-2)
    test_dense_count_matches_formula,
    test_slice_of_slice_count,
    test_sliced_count_matches_formula,
)
from .test_slicing import (  # noqa: F401  (collected again here, on OLMo-2)
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
    test_uniform_specs_give_the_stock_class,
    test_whole_blocks_and_layers_removed_equal_masked_dense,
    tokens,
)


@pytest.fixture(params=OLMO2_CASES, ids=[c.id for c in OLMO2_CASES])
def tiny_case(request):
    return request.param


def test_qk_norms_are_sliced_with_the_heads():
    dense = CASES_BY_ID["olmo2-gqa"].build()
    adapter = adapter_for(dense.config)
    shape = adapter.shape(dense)
    assert shape.qk_norm and shape.qk_norm_whole
    layer = LayerSpec.from_groups(shape.layers[0], [1], [1], list(range(10)))  # query head 3 with KV group 1
    sliced = adapter.slice(dense, SubnetSpec(shape, [layer] * shape.num_layers).validate())
    src, out = dense.model.layers[0].self_attn, sliced.model.layers[0].self_attn
    torch.testing.assert_close(out.q_norm.weight, src.q_norm.weight[24:32], atol=0, rtol=0)
    torch.testing.assert_close(out.k_norm.weight, src.k_norm.weight[8:16], atol=0, rtol=0)


def test_plain_masking_is_not_the_sliced_model():
    """Zeroing a head's output alone leaves it in the q norm's mean square: the masked reference must restrict the
    norms (this is what makes the comparison of the other tests meaningful)."""
    dense = CASES_BY_ID["olmo2-gqa"].build()
    adapter = adapter_for(dense.config)
    shape = adapter.shape(dense)
    spec = SubnetSpec(shape, [LayerSpec.from_groups(s, [0, 1], [0], list(range(37))) for s in shape.layers]).validate()
    sliced, ids = adapter.slice(dense, spec), tokens()
    torch.testing.assert_close(logits(sliced, ids), logits(masked_copy(dense, spec), ids), atol=ATOL, rtol=0)
    plain = masked_copy(dense, spec)
    for layer, original in zip(plain.model.layers, dense.model.layers):
        layer.self_attn.q_norm, layer.self_attn.k_norm = original.self_attn.q_norm, original.self_attn.k_norm
    assert not torch.allclose(logits(sliced, ids), logits(plain, ids), atol=1e-3)
