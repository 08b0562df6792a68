"""Slicing builds a smaller model that computes exactly what the masked dense model computes."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from evoprune_tests import CASES_BY_ID, random_spec
from evoprune.arch.adapter import adapter_for
from evoprune.arch.slicing import head_rows
from evoprune.arch.spec import LayerSpec, SubnetSpec
from evoprune.errors import UserError

ATOL = 1e-5
PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "phi3": "Phi3", "olmo2": "Olmo2"}


def tokens(batch=2, length=10, seed=0, vocab=99):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)  # avoid pad / bos / eos ids


@torch.no_grad()
def logits(model, ids, **kw):
    return model(input_ids=ids, **kw).logits


def masked_copy(model, spec: SubnetSpec):
    """A copy of the dense `model` in which every unit that `spec` removes contributes nothing.

    Removed query heads: their o_proj input columns are zeroed (a removed KV group removes its
    query heads). Removed neurons: their down_proj input columns are zeroed. A removed attention
    / MLP block also loses its output bias. Where q/k norms span all heads (OLMo-2), they normalize over the
    kept heads only, as the sliced model's do. Hidden channels are not handled (must all be kept).
    """
    assert spec.hidden is None
    adapter = adapter_for(model.config)
    masked = copy.deepcopy(model)
    hd = spec.source.head_dim
    with torch.no_grad():
        for ls, layer_shape, layer in zip(spec.layers, spec.source.layers, adapter.layers(masked)):
            o_proj, down = adapter.attention_output(layer), adapter.mlp_output(layer)
            for h in set(range(layer_shape.num_heads)) - set(ls.heads):
                o_proj.weight[:, h * hd:(h + 1) * hd] = 0
            for n in set(range(layer_shape.intermediate_size)) - set(ls.neurons):
                down.weight[:, n] = 0
            if not ls.has_attention and o_proj.bias is not None:
                o_proj.bias.zero_()
            if not ls.has_mlp and down.bias is not None:
                down.bias.zero_()
            if spec.source.qk_norm_whole and ls.has_attention:
                attn = adapter.attention(layer)
                attn.q_norm = KeptChannelsRMSNorm(attn.q_norm, head_rows(ls.heads, hd))
                attn.k_norm = KeptChannelsRMSNorm(attn.k_norm, head_rows(ls.kv_heads, hd))
    return masked


class KeptChannelsRMSNorm(torch.nn.Module):
    """`norm` (an RMSNorm) computing its mean square over the `kept` channels only."""

    def __init__(self, norm, kept: torch.Tensor):
        super().__init__()
        self.norm, self.kept = norm, kept

    def forward(self, x):
        x32 = x.float()
        mean_square = x32[..., self.kept].pow(2).mean(-1, keepdim=True)
        return self.norm.weight * (x32 * torch.rsqrt(mean_square + self.norm.variance_epsilon)).to(x.dtype)


def uniform_spec(shape, kv=(1,), slots=(0,), n_neurons=20, drop_layer=None, hidden=None):
    layers = [LayerSpec.from_groups(layer, list(kv), list(slots), list(range(n_neurons))) for layer in shape.layers]
    if drop_layer is not None:
        layers[drop_layer] = LayerSpec([], [], [])
    return SubnetSpec(shape, layers, hidden).validate()


def different_slots_per_group(layer):
    """Query heads 1 and 2 with their KV groups: slot 1 of group 0 and slot 0 of group 1 under GQA 4/2.

    Valid (one head per kept group) although the slots differ between groups.
    """
    rep = layer.heads_per_group
    return LayerSpec([1, 2], sorted({1 // rep, 2 // rep}), list(range(0, layer.intermediate_size, 3)))


def hetero_spec_without_first_attention(shape, rng):
    """A random spec (all hidden channels kept) whose layer 0 has no attention block."""
    spec = random_spec(shape, rng, keep_hidden=True)
    layer = shape.layers[0]
    spec.layers[0] = LayerSpec([], [], spec.layers[0].neurons or [0, 5, 6])
    if not any(ls.has_attention for ls in spec.layers):
        spec.layers[1] = LayerSpec.from_groups(shape.layers[1], [0], [0], spec.layers[1].neurons)
    assert not spec.is_uniform() and layer.num_kv_heads
    return spec.validate()


# ---- exactness ---------------------------------------------------------------------------------

def test_identity_spec_reproduces_dense_logits(tiny_model):
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    sliced = adapter.slice(tiny_model, SubnetSpec.full(shape))
    assert type(sliced) is type(tiny_model)
    ids = tokens()
    torch.testing.assert_close(logits(sliced, ids), logits(tiny_model, ids), atol=ATOL, rtol=0)
    # the source is untouched and shares no storage with the slice
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    src_ptrs = {p.data_ptr() for p in tiny_model.parameters()}
    assert not src_ptrs & {p.data_ptr() for p in sliced.parameters()}
    assert adapter_for(sliced.config).shape(sliced) == shape
    for attr in ("sliding_window", "layer_types", "use_sliding_window", "tie_word_embeddings", "rope_parameters"):
        assert getattr(sliced.config, attr, None) == getattr(tiny_model.config, attr, None), attr


def test_random_spec_equals_masked_dense(tiny_model):
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    rng = random.Random(42)
    ids = tokens(length=10)  # longer than mistral's sliding window of 4
    mask = torch.ones_like(ids)
    for _ in range(4):
        spec = random_spec(shape, rng, keep_hidden=True)
        sliced = adapter.slice(tiny_model, spec)
        expected = logits(masked_copy(tiny_model, spec), ids, attention_mask=mask)
        got = logits(sliced, ids, attention_mask=mask)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0, msg=lambda m: f"{spec.to_dict()['layers']}\n{m}")
        # the masked model really differs from the dense one (the test can fail)
        if not spec.is_identity():
            assert not torch.allclose(expected, logits(tiny_model, ids), atol=1e-3)


def test_whole_blocks_and_layers_removed_equal_masked_dense(tiny_model):
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    full = SubnetSpec.full(shape).layers
    cases = [
        [LayerSpec([], [], full[0].neurons), full[1], full[2]],  # attention of layer 0 removed
        [full[0], LayerSpec(full[1].heads, full[1].kv_heads, []), full[2]],  # MLP of layer 1 removed
        [full[0], LayerSpec([], [], []), full[2]],  # layer 1 dropped
        [LayerSpec([], [], []), LayerSpec([], [], full[1].neurons), LayerSpec(full[2].heads, full[2].kv_heads, [])],
        [full[0], different_slots_per_group(shape.layers[1]), full[2]],
    ]
    ids = tokens(batch=1, length=9)
    for layers in cases:
        spec = SubnetSpec(shape, copy.deepcopy(layers)).validate()
        sliced = adapter.slice(tiny_model, spec)
        assert len(adapter.layers(sliced)) == len(spec.kept_layers())
        torch.testing.assert_close(logits(sliced, ids), logits(masked_copy(tiny_model, spec), ids), atol=ATOL, rtol=0)


def test_eager_and_sdpa_attention_agree_with_padding(tiny_model):
    adapter = adapter_for(tiny_model.config)
    spec = hetero_spec_without_first_attention(adapter.shape(tiny_model), random.Random(4))
    sliced = adapter.slice(tiny_model, spec)
    ids = tokens(length=9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    sdpa = logits(sliced, ids, attention_mask=mask)
    sliced.set_attn_implementation("eager")
    assert all(layer.self_attn.config._attn_implementation == "eager"
               for layer in sliced.model.layers if layer.self_attn is not None)
    eager = logits(sliced, ids, attention_mask=mask)
    torch.testing.assert_close(eager[0], sdpa[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(eager[1, 3:], sdpa[1, 3:], atol=ATOL, rtol=0)


def test_hidden_slicing_composes(tiny_model):
    """Removing hidden channels then units equals removing both at once (and stays finite)."""
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    rng = random.Random(3)
    units = random_spec(shape, rng, keep_hidden=True)
    hidden = sorted(rng.sample(range(shape.hidden_size), 20))
    both = SubnetSpec(shape, copy.deepcopy(units.layers), hidden).validate()
    at_once = adapter.slice(tiny_model, both)

    narrow = adapter.slice(tiny_model, SubnetSpec(shape, SubnetSpec.full(shape).layers, hidden).validate())
    narrow_shape = adapter_for(narrow.config).shape(narrow)
    assert narrow_shape.hidden_size == 20
    then_units = adapter.slice(narrow, SubnetSpec(narrow_shape, copy.deepcopy(units.layers)).validate())

    ids = tokens()
    out = logits(at_once, ids)
    assert out.shape == (2, 10, shape.vocab_size) and torch.isfinite(out).all()
    torch.testing.assert_close(logits(then_units, ids), out, atol=ATOL, rtol=0)
    assert at_once.get_input_embeddings().weight.shape == (shape.vocab_size, 20)
    torch.testing.assert_close(at_once.get_input_embeddings().weight,
                               tiny_model.get_input_embeddings().weight[:, hidden])


def test_streamed_layers_equal_the_sliced_model(tiny_model):
    """sliced_layers (one layer at a time, as the database and the re-fit use it) builds the sliced model's layers."""
    adapter = adapter_for(tiny_model.config)
    spec = random_spec(adapter.shape(tiny_model), random.Random(7), keep_hidden=True)
    whole = adapter.slice(tiny_model, spec)
    for built, expected in zip(adapter.sliced_layers(tiny_model, spec), adapter.layers(whole), strict=True):
        assert built.state_dict().keys() == expected.state_dict().keys()
        for name, tensor in built.state_dict().items():
            assert torch.equal(tensor, expected.state_dict()[name]), name


# ---- which class comes out ---------------------------------------------------------------------

def test_uniform_specs_give_the_stock_class(tiny_model):
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    family = shape.family
    for spec in (uniform_spec(shape), uniform_spec(shape, kv=(0,), slots=(0,), drop_layer=1),
                 uniform_spec(shape, hidden=list(range(0, 32, 2)))):
        assert spec.is_uniform()
        sliced = adapter.slice(tiny_model, spec)
        assert type(sliced) is type(tiny_model)
        assert sliced.config.model_type == family
        assert sliced.config.num_hidden_layers == len(spec.kept_layers())
        assert not getattr(sliced.config, "auto_map", None)
        assert adapter_for(sliced.config).shape(sliced) == spec.result_shape()
        out = logits(sliced, tokens())
        assert torch.isfinite(out).all()
        if spec.hidden is None:
            torch.testing.assert_close(out, logits(masked_copy(tiny_model, spec), tokens()), atol=ATOL, rtol=0)


def test_heterogeneous_specs_give_the_evoprune_class(tiny_model):
    adapter = adapter_for(tiny_model.config)
    shape = adapter.shape(tiny_model)
    rng = random.Random(11)
    hetero = [hetero_spec_without_first_attention(shape, rng)]
    while len(hetero) < 3:
        spec = random_spec(shape, rng)
        if not spec.is_uniform():
            hetero.append(spec)
    for spec in hetero:
        sliced = adapter.slice(tiny_model, spec)
        assert type(sliced).__name__ == f"Evoprune{PREFIX[shape.family]}ForCausalLM"
        assert type(sliced).__module__.startswith("evoprune.")
        assert sliced.config.model_type == f"evoprune_{shape.family}"
        assert sliced.config.layer_num_attention_heads == [len(spec.layers[i].heads) for i in spec.kept_layers()]
        assert sliced.config.layer_intermediate_sizes == [len(spec.layers[i].neurons) for i in spec.kept_layers()]
        assert adapter_for(sliced.config).shape(sliced) == spec.result_shape()


def test_slice_keeps_dtype():
    model = CASES_BY_ID["qwen2-gqa-tied"].build().to(torch.bfloat16)
    adapter = adapter_for(model.config)
    spec = random_spec(adapter.shape(model), random.Random(0))
    sliced = adapter.slice(model, spec)
    assert {p.dtype for p in sliced.parameters()} == {torch.bfloat16}
    assert torch.isfinite(logits(sliced, tokens()).float()).all()


# ---- refusals ----------------------------------------------------------------------------------

def test_slice_refuses_spec_of_other_model(tiny_llama):
    other = CASES_BY_ID["llama-mha-bias-tied"].build()
    spec = SubnetSpec.full(adapter_for(other.config).shape(other))
    with pytest.raises(UserError, match="different model"):
        adapter_for(tiny_llama.config).slice(tiny_llama, spec)


def test_slice_refuses_spec_without_attention(tiny_llama):
    adapter = adapter_for(tiny_llama.config)
    shape = adapter.shape(tiny_llama)
    spec = SubnetSpec(shape, [LayerSpec([], [], list(range(10))) for _ in shape.layers]).validate()
    with pytest.raises(UserError, match="no attention block"):
        adapter.slice(tiny_llama, spec)


def test_slice_refuses_invalid_spec(tiny_llama):
    adapter = adapter_for(tiny_llama.config)
    spec = SubnetSpec.full(adapter.shape(tiny_llama))
    spec.layers[2] = LayerSpec([0, 1, 2], [0, 1], [0])
    with pytest.raises(UserError, match="layer 2"):
        adapter.slice(tiny_llama, spec)


# ---- generation --------------------------------------------------------------------------------

GEN = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_scores=True,
           pad_token_id=0, eos_token_id=None)


@torch.no_grad()
def greedy(model, ids, **kw):
    out = model.generate(input_ids=ids, attention_mask=kw.pop("attention_mask", torch.ones_like(ids)), **GEN, **kw)
    return out.sequences, torch.stack(out.scores, dim=1)


@torch.no_grad()
def greedy_by_hand(model, ids, steps):
    """Greedy decoding by full forward passes, no cache, no generate()."""
    for _ in range(steps):
        nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def test_cached_and_uncached_generation_agree_without_first_attention(tiny_model):
    adapter = adapter_for(tiny_model.config)
    spec = hetero_spec_without_first_attention(adapter.shape(tiny_model), random.Random(5))
    sliced = adapter.slice(tiny_model, spec)
    assert sliced.model.layers[0].self_attn is None  # the KV-cache edge case: layer 0 has no cache
    ids = tokens(batch=1, length=6, seed=1)
    seq_cached, scores_cached = greedy(sliced, ids, use_cache=True)
    seq_plain, scores_plain = greedy(sliced, ids, use_cache=False)
    assert seq_cached.shape == (1, 6 + GEN["max_new_tokens"])
    assert torch.equal(seq_cached, seq_plain)
    torch.testing.assert_close(scores_cached, scores_plain, atol=1e-4, rtol=0)
    assert torch.equal(seq_cached, greedy_by_hand(sliced, ids, GEN["max_new_tokens"]))
    # and the cached pruned model follows the masked dense model (stock classes, stock cache)
    seq_dense, scores_dense = greedy(masked_copy(tiny_model, spec), ids, use_cache=True)
    assert torch.equal(seq_cached, seq_dense)
    torch.testing.assert_close(scores_cached, scores_dense, atol=1e-4, rtol=0)


def test_batch_generation_with_left_padding(tiny_model):
    adapter = adapter_for(tiny_model.config)
    spec = hetero_spec_without_first_attention(adapter.shape(tiny_model), random.Random(8))
    sliced = adapter.slice(tiny_model, spec)
    long, short = tokens(batch=1, length=7, seed=2), tokens(batch=1, length=4, seed=3)
    pad = torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([long, torch.cat([pad, short], dim=1)])
    mask = torch.cat([torch.ones(1, 7, dtype=torch.long), torch.cat([torch.zeros(1, 3), torch.ones(1, 4)], 1).long()])
    seq, scores = greedy(sliced, batch, attention_mask=mask, use_cache=True)
    for row, prompt in ((0, long), (1, short)):
        alone_seq, alone_scores = greedy(sliced, prompt, use_cache=True)
        assert torch.equal(seq[row, 7:], alone_seq[0, prompt.shape[1]:]), row
        torch.testing.assert_close(scores[row], alone_scores[0], atol=1e-4, rtol=0)
